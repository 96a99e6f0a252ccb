"""Loaded by the plug-ins' Python in the GUI tests (this folder is on their PYTHONPATH): twice a
second it writes where each widget of the plug-in's open windows is on the screen, with its words
(label, tooltip), so that a test finds a widget as a person does, by what it
says, and clicks it wherever the theme put it.

It waits until the plug-in has loaded GTK itself (it never chooses GTK's version) and writes
only from GTK's own thread.
"""

import json
import os
import sys
import threading
import time

MAP_FILE = os.environ.get("DEEPDREAM_WIDGET_MAP")


def _describe(widget, toplevel, origin, parent_id):
    from gi.repository import GimpUi, Gtk

    entry = {"id": id(widget), "parent": parent_id, "type": type(widget).__name__,
             "name": widget.get_name(), "sensitive": widget.is_sensitive()}  # fmt: skip
    position = widget.translate_coordinates(toplevel, 0, 0)
    allocation = widget.get_allocation()
    if position is not None:
        entry["box"] = [origin[0] + position[0], origin[1] + position[1], allocation.width,
                        allocation.height]  # fmt: skip
    if widget.get_tooltip_text():
        entry["tooltip"] = widget.get_tooltip_text()
    if isinstance(widget, Gtk.Label):
        entry["text"] = widget.get_text()
        entry["label"] = widget.get_label()
        target = widget.get_mnemonic_widget()
        if target is not None:
            entry["for"] = id(target)
    elif widget.find_property("label") is not None:  # buttons, frames, expanders, spin scales
        label = widget.get_property("label")
        if isinstance(label, str) and label:
            entry["text"] = label.replace("_", "")
            entry["label"] = label
    if isinstance(widget, Gtk.ToggleButton):
        entry["active"] = widget.get_active()
    if isinstance(widget, Gtk.Entry):
        entry["value"] = widget.get_text()
    if isinstance(widget, Gtk.Scrollbar):  # where a scrolled view is
        entry["value"] = widget.get_adjustment().get_value()
        entry["orientation"] = widget.get_orientation().value_nick
    if isinstance(widget, Gtk.Expander):
        entry["expanded"] = widget.get_expanded()
    if isinstance(widget, GimpUi.StringComboBox):
        entry["value"] = GimpUi.StringComboBox.get_active(widget)
    elif isinstance(widget, Gtk.ComboBox) and widget.get_active_id() is not None:
        entry["value"] = widget.get_active_id()
    return entry


def _walk(widget, toplevel, origin, parent_id, found, alive):
    from gi.repository import Gtk

    if not widget.get_mapped():
        return
    alive.append(widget)  # a wrapper kept alive keeps its id: ids name widgets within a map
    found.append(_describe(widget, toplevel, origin, parent_id))
    if isinstance(widget, Gtk.Container):
        for child in widget.get_children():
            _walk(child, toplevel, origin, id(widget), found, alive)


def _write_map():
    from gi.repository import Gtk

    windows, alive = [], []
    for window in Gtk.Window.list_toplevels():
        gdk_window = window.get_window()
        if not window.get_mapped() or gdk_window is None:
            continue
        _, x, y = gdk_window.get_origin()
        widgets = []
        _walk(window, window, (x, y), None, widgets, alive)
        box = [x, y, window.get_allocated_width(), window.get_allocated_height()]
        windows.append({"title": window.get_title() or "", "box": box, "widgets": widgets})
    partial = f"{MAP_FILE}.{os.getpid()}"
    with open(partial, "w") as out:
        json.dump({"pid": os.getpid(), "time": time.time(), "windows": windows}, out)
    os.replace(partial, MAP_FILE)
    return True


def _wait_for_gtk():
    while "gi.repository.Gtk" not in sys.modules and "gi.repository.GimpUi" not in sys.modules:
        time.sleep(0.05)
    time.sleep(0.2)  # the plug-in finishes its imports
    import gi

    gi.require_version("Gtk", "3.0")  # GIMP 3's, already loaded by GimpUi
    from gi.repository import GLib

    GLib.timeout_add(500, _write_map)


if MAP_FILE:
    threading.Thread(target=_wait_for_gtk, daemon=True).start()
