"""The GIMP side: the plug-in and the small client it uses to reach the dream server."""
