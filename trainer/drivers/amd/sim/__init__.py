"""The simulated GPU: a KFD behind the driver's OS seam (kernel.py: ioctls, mmaps, the sysfs tree of
sysfs.py), engines that execute the packets the driver wrote into ring memory (engines.py), and the
runner that executes a dispatched kernel's own source compiled for the host with a grid shim
(runner.py, shim.c)."""
