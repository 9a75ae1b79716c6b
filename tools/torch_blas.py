"""Which BLAS the PyTorch side of a benchmark multiplies with.

Debian's python3-torch is built with BLAS_INFO=generic: its matrix products (torch.nn.Linear,
matmul) call whatever libblas.so.3 the alternatives system points at. On a machine where only
libblas3 is installed that is Netlib's reference BLAS, about 1.2 GFLOP/s for an sgemm on one
AMD EPYC core against 40-55 with OpenBLAS: a benchmark against that PyTorch measures the
reference BLAS, not PyTorch. tools/test.sh installs libopenblas0-pthread; the benchmarks print
this line and refuse to compare against the reference BLAS unless told to.

    import torch_blas; print(torch_blas.describe())   # after importing torch
"""
import os

REFERENCE_DIR = "/blas/"  # Debian's libblas3 lives in /usr/lib/<triplet>/blas/libblas.so.3


def loaded_blas():
    """The real path of the libblas.so.3 mapped into this process (None when none is)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if os.path.basename(path).startswith("libblas.so"):
                    return os.path.realpath(path)
                if "openblas" in os.path.basename(path).lower():
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def is_reference(path):
    return path is not None and REFERENCE_DIR in path and "openblas" not in path and "blis" not in path


def describe():
    path = loaded_blas()
    if path is None:
        return "torch BLAS: none mapped (torch not imported yet, or statically linked)"
    kind = "Netlib reference BLAS (slow; install libopenblas0-pthread)" if is_reference(path) else "optimized"
    return "torch BLAS: %s (%s)" % (path, kind)


def set_threads(n):
    """OpenBLAS sizes its own thread pool (all cores) and ignores torch.set_num_threads: give it
    the benchmark's thread count, so that both sides use the same cores."""
    path = loaded_blas()
    if path is None or "openblas" not in path:
        return
    import ctypes
    try:
        ctypes.CDLL(path).openblas_set_num_threads(int(n))
    except (OSError, AttributeError):
        pass


def check(threads=None, allow_reference=False):
    """Prints the BLAS line (after `import torch`), pins OpenBLAS to `threads`; raises SystemExit
    on the reference BLAS unless allowed."""
    if threads is not None:
        set_threads(threads)
    line = describe()
    print(line)
    if is_reference(loaded_blas()) and not allow_reference:
        raise SystemExit("PyTorch would multiply with the Netlib reference BLAS, which makes any ratio meaningless: "
                         "apt-get install libopenblas0-pthread (or pass --allow-reference-blas)")
    return line
