"""What ships to GIMP beside the plug-in, and what the server shares with it: the wire protocol
(`wire`), the client (`client`) and ZeroMQ's protocol in the standard library (`zmtp`).

Standard library only (pyzmq where it imports), so that GIMP's own Python runs it; install.py
copies this package whole next to the plug-in, and the server imports it from here.
"""
