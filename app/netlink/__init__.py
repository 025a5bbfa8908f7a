"""Kernel event interfaces: netlink sockets, their wire formats and the sources built on them."""
