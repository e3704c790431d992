"""Peak memory of a test's child process, read by the child itself.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not the child's own: Python starts children with
vfork + exec, and Linux carries the peak of the memory map replaced at exec (the parent's,
under vfork) into the new process's ``ru_maxrss``. A child of a pytest process that once held
5 GB reports at least 5 GB. The kernel's high-water mark of the child's own memory map
(``VmHWM``) does not carry over."""

OWN_PEAK_KB = '''
def own_peak_kb():
    """This process's own peak resident memory in KiB (VmHWM; ru_maxrss off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
'''
