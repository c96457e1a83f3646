"""Memory measurement shared by the benchmark scripts."""


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB, from /proc (``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: Linux keeps that across ``exec``, so a child process would report its
    parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status")
