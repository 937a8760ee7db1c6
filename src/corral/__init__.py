"""Corral: one private, offline AI assistant from a pile of old PCs."""


def _preload_onnxruntime() -> None:
    """Load onnxruntime's library before anything imports usearch.

    usearch's extension carries its own copy of the C++ runtime; once it is loaded, importing
    onnxruntime (Silero VAD, smart-turn and Piper use it) kills the process with SIGSEGV inside
    std::codecvt. Loading onnxruntime's library first (15 ms, no Python import) avoids it."""
    import contextlib
    import ctypes
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return
    if spec is None or spec.origin is None:
        return
    for library in sorted((Path(spec.origin).parent / "capi").glob("onnxruntime_pybind11_state*")):
        with contextlib.suppress(OSError):
            ctypes.CDLL(str(library))
        return


_preload_onnxruntime()
