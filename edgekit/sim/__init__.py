"""Device emulators: stand-ins a user runs in place of a board (``edgekit device-sim``). Not transports:
the host reaches them through a real transport (a pseudo-terminal)."""
