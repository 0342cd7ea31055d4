import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

# The suite is many small tensor operations: on a 2-core runner OpenMP's fork/join costs more than it saves
# (measured: mixed-sample track 4 forward 0.18 s on 1 thread vs 1.4 s on 2 threads under load).
torch.set_num_threads(1)
