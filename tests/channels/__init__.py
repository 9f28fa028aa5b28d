"""Tests of the channel adapters, each against real sockets or real files."""
