"""Netlink sockets and kernel wire formats: bytes in and out, nothing about lives."""
