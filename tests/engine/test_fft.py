"""The fingerprinter's FFT (songscan.fft): SciPy's pocketfft without `import scipy.fft`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import scipy.fft

from songscan import fft
from songscan.config import DEFAULT


def test_the_same_bits_as_scipy_fft() -> None:
    rng = np.random.default_rng(7)
    n_fft = DEFAULT.fingerprint.n_fft
    for frames in (
        rng.standard_normal((937, n_fft)).astype(np.float32),
        np.zeros((3, n_fft), dtype=np.float32),
        (rng.standard_normal((5, n_fft)) * 1e-30).astype(np.float32),
    ):
        ours = fft.rfft_rows(frames)
        theirs = scipy.fft.rfft(frames, axis=1)
        assert ours.dtype == theirs.dtype == np.complex64
        assert np.array_equal(ours, theirs)  # bit for bit, not approximately


def test_it_loads_without_importing_scipy() -> None:
    probe = (
        "import sys, numpy as np; from songscan.fft import rfft_rows, _transform; "
        "rfft_rows(np.ones((2, 1024), np.float32)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
