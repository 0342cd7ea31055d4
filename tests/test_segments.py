import h5py
import numpy as np
import pytest
import torch

import sparsetpc as st
from sparsetpc.example import generate, write_example
from sparsetpc.segments import swap_xz
from helpers import SHARED, needs_shared


class TestSegments:
    def test_from_numpy_swap(self):
        rows = generate(1, 1, seed=3)              # edep-sim frame: x is the drift axis
        segs = st.Segments.from_numpy(rows)        # swapped by default, as load_segments does
        same = st.Segments.from_numpy(swap_xz(rows), swap=False)
        assert torch.equal(segs.start, same.start) and torch.equal(segs.end, same.end)
        assert torch.allclose(segs.start[:, 2], torch.as_tensor(rows["x_start"], dtype=torch.float64))
        assert torch.allclose(segs.start[:, 0], torch.as_tensor(rows["z_start"], dtype=torch.float64))
        assert len(segs) == len(rows)

    def test_load_example_roundtrip(self, tmp_path):
        path = write_example(tmp_path / "ex.h5", n_events=2, tracks_per_event=2, seed=1)
        segs = st.load_segments(path, cuts=st.Cuts.none(), dtype=torch.float32)
        assert segs.dtype == torch.float32
        assert set(segs.events().tolist()) == {0, 1}
        again = st.load_segments(path, cuts=st.Cuts.none())
        assert torch.equal(again.start.float(), segs.start)

    def test_example_is_seeded_and_consistent(self):
        a, b = generate(2, 2, seed=7), generate(2, 2, seed=7)
        assert np.array_equal(a, b)
        length = np.sqrt(sum((a[f + "_end"] - a[f + "_start"]) ** 2 for f in "xyz"))
        assert np.allclose(length, a["dx"], rtol=1e-5)
        assert np.allclose(a["dE"], a["dEdx"] * a["dx"], rtol=1e-5)

    @pytest.mark.parametrize("problem", ["missing", "nan", "mm", "empty", "nodataset", "negative"])
    def test_bad_input_errors(self, tmp_path, problem):
        rows = generate(1, 1, seed=0)
        path = tmp_path / "bad.h5"
        if problem == "missing":
            names = [n for n in rows.dtype.names if n != "dE"]
            rows = rows[names]
            match = "missing field"
        elif problem == "nan":
            rows["x_start"][2] = np.nan
            match = "non-finite"
        elif problem == "mm":
            for f in ("x", "y", "z"):
                for suffix in ("", "_start", "_end"):
                    rows[f + suffix] *= 100.0   # m read as cm (an ND-sized file in mm is caught by simulate)
            match = "cm"
        elif problem == "negative":
            rows["dE"][0] = -1
            match = "negative"
        elif problem == "empty":
            rows = rows[:0]
            match = "empty"
        with h5py.File(path, "w") as f:
            f.create_dataset("tracks" if problem == "nodataset" else "segments", data=np.asarray(rows))
        with pytest.raises(st.InputFormatError, match="no dataset" if problem == "nodataset" else match):
            st.load_segments(path, cuts=st.Cuts.none())

    def test_nothing_passes_cuts(self, tmp_path):
        path = write_example(tmp_path / "ex.h5", n_events=1, tracks_per_event=1, seed=2)
        cuts = st.Cuts(track_length_min=1e6)
        with pytest.raises(st.InputFormatError, match="no segment passes"):
            st.load_segments(path, cuts=cuts)

    @needs_shared
    def test_default_selection_matches_reference_counts(self):
        # physics.md §7.2: the default selection keeps 1299 tracks and 5216 segments of the mixed sample;
        # with track_len_sel = 0, 18 218 segments.
        with h5py.File(SHARED / "inputs" / "mixed_sample.h5") as f:
            rows = swap_xz(f["segments"][()])
        keep = st.Cuts().mask(rows)
        assert keep.sum() == 5216
        # 1299 tracks pass the track-level cuts (the reference keeps tracks whose segments all fail |z| > 15)
        track_level = st.Cuts(min_abs_segment_z=None).mask(rows)
        tracks = np.unique(rows["eventID"][track_level].astype(np.int64) * 100000 + rows["trackID"][track_level])
        assert len(tracks) == 1299
        assert st.Cuts(track_length_min=0.0).mask(rows).sum() == 18218
        assert st.Cuts.none().mask(rows).sum() == int((rows["dx"] > 0).sum())
