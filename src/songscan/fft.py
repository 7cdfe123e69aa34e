"""The fingerprinter's real FFT: SciPy's pocketfft module, loaded on its own.

`import scipy.fft` also imports scipy.special and SciPy's array-API layer: some 0.25 s of CPU
on every start, more than the fingerprinting and matching of a 1-minute file. The transform
itself is one compiled module that needs only numpy, so it is loaded from SciPy's installed
files without the package around it (SciPy is pinned: the module is the one the tests ran).
Same module, same arguments as `scipy.fft.rfft(x, axis=1)`: the same bits. Where it cannot be
loaded that way, `scipy.fft` is imported as before.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np


def rfft_rows(frames: np.ndarray) -> np.ndarray:
    """The forward real FFT of each row of `frames` (unnormalised, one thread), as
    `scipy.fft.rfft(frames, axis=1)`: complex64 for float32 input."""
    return _transform()(frames)


@functools.cache
def _transform() -> Callable[[np.ndarray], np.ndarray]:
    pocketfft = _pocketfft()
    if pocketfft is not None:
        # pocketfft's r2c(input, axes, forward, normalisation 0 (none), out, threads)
        return lambda frames: pocketfft.r2c(frames, (1,), True, 0, None, 1)
    import scipy.fft

    return lambda frames: scipy.fft.rfft(frames, axis=1)


def _pocketfft() -> ModuleType | None:
    """SciPy's compiled pocketfft module, or None where it is not found or does not load."""
    spec = importlib.util.find_spec("scipy")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "fft" / "_pocketfft"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"pypocketfft{suffix}"
        if not path.is_file():
            continue
        loader = importlib.machinery.ExtensionFileLoader("pypocketfft", str(path))
        found = importlib.util.spec_from_file_location("pypocketfft", path, loader=loader)
        if found is None:
            continue
        try:
            module = importlib.util.module_from_spec(found)
            loader.exec_module(module)
        except ImportError:
            return None
        return module
    return None
