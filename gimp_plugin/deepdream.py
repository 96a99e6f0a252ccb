#!/usr/bin/env python3
"""DeepDream for GIMP 3: Filters > Artistic > DeepDream...

Reads the selected part of the active layer (plus some context around it), has the dream server
dream on it, and adds the result as a new layer above the source, with the selection as its layer
mask (or baked into alpha). Nothing in the image changes until the dream is back; then one undo
group adds the layer, so one Undo removes it.
"""

import json
import os
import sys
import threading
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("Gtk", "3.0")
from gi.repository import Gegl, Gimp, GimpUi, Gio, GLib, GObject, Gtk  # noqa: E402

# install.py puts the dream_link package beside this file, where Python finds it
from dream_link.client import LOST, UNREACHABLE, DreamClient  # noqa: E402
from dream_link.wire import (  # noqa: E402
    CUSTOM_PRESET,
    MAX_LISTED_FRAMES,
    DreamCancelled,
    DreamError,
    log_path,
    schema_hash,
)

PROCEDURE = "plug-in-deepdream"
VISUALIZE_PROCEDURE = "plug-in-deepdream-visualize"
ZOOM_PROCEDURE = "plug-in-deepdream-zoom"
FRAMES_PROCEDURE = "plug-in-deepdream-frames"
CHANNELS_PROCEDURE = "plug-in-deepdream-channels"
ACCENTUATE_PROCEDURE = "plug-in-deepdream-accentuate"
HERE = os.path.dirname(os.path.abspath(__file__))
HELP_DOMAIN = "deepdream-for-gimp"
ZOOM_MEMORY_LIMIT = 2_000_000_000
"""The frames of a zoom (or of DeepDream Frames) wait in the plug-in until the new image is made
(so that a cancel leaves nothing behind): one that would hold more is refused before it
starts."""
CONTEXT_MARGIN = 64
"""Pixels of the layer around the selection that the network sees, so the edge has context."""
LAYOUTS = (
    ("layers", "A layer per sample", "Each sample in a layer of its own, named after it"),
    ("sheet", "Side by side", "All samples side by side in one layer, each labelled"),
)
EXEMPLAR_SOURCES = (
    {"name": "exemplars-folder", "kind": "folder", "default": None, "label": "Examples folder",
     "help": "A folder of your photos: beside each channel, the patches of them that excite it "
             "most"},
    {"name": "open-images", "kind": "bool", "default": False, "label": "Images open now",
     "help": "Also look for those patches in every image open in GIMP"},
)  # fmt: skip
"""Where DeepDream Strongest Channels and Feature Visualization find the patches of the
artist's photos that excite a channel most: the plug-in's own arguments."""
EXEMPLAR_SEND_SIDE = 1024
"""Exemplar photos go to the server with their longer side at most this (it looks at them
smaller still): a folder of phone photos would be gigabytes."""
MADE_HERE = "deepdream-made"
"""The mark on the images DeepDream makes (sheets, frames), which are no photos to find
examples in."""
CHANGE_MASK = {"name": "change-mask", "kind": "bool", "default": True,
               "label": "Mask where it changed",
               "help": "The new layer's mask is white where the photo changed most: paint on "
                       "it to keep more or less of the change"}  # fmt: skip
SELECTION_MODES = (
    ("mask", "Layer mask", "The selection becomes the new layer's mask (editable later)"),
    ("alpha", "Alpha", "The selection is baked into the new layer's transparency"),
)
FLAGS = GObject.ParamFlags.READWRITE


def load_parameters(name="dream"):
    """The parameters of `name` (dream, visualize, zoom, ...) as the engine defines them:
    install.py writes them beside this file, `parameters.json` the dream's, `parameters-NAME.json`
    the others'."""
    file = "parameters.json" if name == "dream" else f"parameters-{name}.json"
    with open(os.path.join(HERE, file)) as schema:
        return json.load(schema)


def connect():
    """A client of the dream server, which must define the parameters this plug-in was installed
    with: else both come from different releases, and the client says to install again."""
    files = [f for f in os.listdir(HERE) if f.startswith("parameters") and f.endswith(".json")]
    names = [f[len("parameters-") : -len(".json")] if "-" in f else "dream" for f in files]
    schemas = {name: load_parameters(name) for name in names}
    return DreamClient(schema=schema_hash(schemas))


BUTTON_MNEMONICS = set("ochrls")
"""The letters of the dialogs' own buttons: _OK, _Cancel, _Help, _Reset, _Load and _Save (the
defaults); the DeepDream dialog's preview adds _Preview's."""


def with_mnemonics(labels, reserved=BUTTON_MNEMONICS):
    """{label: the label with an underline under one of its letters}, no letter twice and none
    of the dialogs' buttons' (every setting gets its Alt+key, and GIMP has no mnemonic to warn
    about): a matching of labels to their letters, earlier letters first."""
    owner = {}

    def place(index, tried):
        for letter in labels[index].lower():
            if not letter.isalnum() or letter in reserved or letter in tried:
                continue
            tried.add(letter)
            if letter not in owner or place(owner[letter], tried):
                owner[letter] = index
                return True
        return False

    for index in range(len(labels)):
        place(index, set())
    marked = {label: label for label in labels}
    for letter, index in owner.items():
        label = labels[index]
        at = label.lower().index(letter)
        marked[label] = label[:at] + "_" + label[at:]
    return marked


def add_arguments(
    procedure, parameters, described_choices=(), layout=None, reserved=BUTTON_MNEMONICS
):
    """The parameters (as the engine defines them), then the plug-in's own choices
    (name, label, help, entries, default), each label the layout shows with its Alt+key."""
    hidden = layout.hidden if layout is not None else ()
    labels = [param["label"] for param in parameters if param["name"] not in hidden]
    mnemonics = with_mnemonics(labels + [choice[1] for choice in described_choices], reserved)
    for name, label, help_text, entries, default in described_choices:
        add_described_choice(procedure, name, mnemonics[label], help_text, entries, default)
    for param in parameters:
        name, help_text = param["name"], param["help"]
        label = mnemonics.get(param["label"], param["label"])
        kind, default = param["kind"], param["default"]
        if kind == "int":
            procedure.add_int_argument(
                name, label, help_text, int(param["minimum"]), int(param["maximum"]), default, FLAGS
            )
        elif kind == "float":
            procedure.add_double_argument(
                name,
                label,
                help_text,
                float(param["minimum"]),
                float(param["maximum"]),
                float(default),
                FLAGS,
            )
        elif kind == "bool":
            procedure.add_boolean_argument(name, label, help_text, default, FLAGS)
        elif kind == "choice":
            choices = choice_of(param["choices"], param.get("choice_help", {}))
            procedure.add_choice_argument(name, label, help_text, choices, default, FLAGS)
        elif kind == "folder":
            folder = Gimp.FileChooserAction.SELECT_FOLDER
            procedure.add_file_argument(name, label, help_text, folder, True, None, FLAGS)
        else:
            procedure.add_string_argument(name, label, help_text, default, FLAGS)


def add_described_choice(procedure, name, label, help_text, entries, default):
    choice = Gimp.Choice.new()
    for index, (nick, entry_label, entry_help) in enumerate(entries):
        choice.add(nick, index, entry_label, entry_help)
    procedure.add_choice_argument(name, label, help_text, choice, default, FLAGS)


def choice_of(nicks, help_by_nick):
    """A choice whose entries say what each gives: "animals: animal faces, eyes and fur"."""
    choice = Gimp.Choice.new()
    for index, nick in enumerate(nicks):
        help_text = help_by_nick.get(nick, "")
        choice.add(nick, index, f"{nick}: {help_text}" if help_text else nick, help_text)
    return choice


class Region:
    """The part of the layer to dream on: the selection's bounds plus context, in layer pixels."""

    def __init__(self, drawable, x, y, width, height, margin=CONTEXT_MARGIN):
        self.selection = (x, y, width, height)
        left, top = max(0, x - margin), max(0, y - margin)
        right = min(drawable.get_width(), x + width + margin)
        bottom = min(drawable.get_height(), y + height + margin)
        self.context = (left, top, right - left, bottom - top)

    def crop(self, pixels, channels, item_size):
        """The selection's bounds out of pixels read for the context rectangle."""
        if self.context == self.selection:
            return pixels
        x, y, width, height = self.selection
        left, top, context_width, _ = self.context
        row = context_width * channels * item_size
        start = (x - left) * channels * item_size
        view = memoryview(pixels)
        return b"".join(
            view[
                (y - top + r) * row + start : (y - top + r) * row
                + start
                + width * channels * item_size
            ]
            for r in range(height)
        )


def pixel_format(image):
    """The babl format to read and write, its channel count and bytes per channel."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    high_depth = image.get_precision() not in (
        Gimp.Precision.U8_NON_LINEAR,
        Gimp.Precision.U8_LINEAR,
        Gimp.Precision.U8_PERCEPTUAL,
    )
    name = ("Y'A" if gray else "R'G'B'A") + (" float" if high_depth else " u8")
    return name, 2 if gray else 4, 4 if high_depth else 1


def read(drawable, rectangle, babl_format):
    x, y, width, height = rectangle
    buffer = drawable.get_buffer()
    return buffer.get(
        Gegl.Rectangle.new(x, y, width, height), 1.0, babl_format, Gegl.AbyssPolicy.CLAMP
    )


class Layout:
    """A dialog's arrangement: framed groups of arguments (every other argument under a folded
    Advanced group) in two columns, so that it fits a 1366x768 laptop screen with Advanced open
    and an error shown. `preview` in a column stands for the live preview and its status line,
    `problem` for the line that says what the server refused."""

    def __init__(self, title, groups, left, right, hidden=()):
        self.title, self.groups, self.columns = title, groups, (left, right)
        self.hidden = hidden
        """Arguments for scripts only, not shown in the dialog."""


DREAM_LAYOUT = Layout(
    "DeepDream",
    (("what", "What to dream", ("preset", "layers", "model")),
     ("how-much", "How much", ("strength", "steps", "octaves", "keep-colors")),
     ("result", "The result", ("selection-mode", "tileable"))),
    left=("preview", "advanced"),
    right=("what", "how-much", "result", "problem"),
)  # fmt: skip
ZOOM_LAYOUT = Layout(
    "DeepDream Zoom",
    (("camera", "The camera", ("frames", "zoom", "rotate", "shift-x", "shift-y", "fps")),
     ("what", "What to dream", ("preset", "layers", "model")),
     ("how-much", "How much", ("strength", "steps", "steps-per-frame", "octaves"))),
    left=("camera", "advanced"),
    right=("what", "how-much", "problem"),
    # a zoom's frames are the selection's size (tiles rarely matter), each adds to the last (a
    # limit to the change of one makes little sense), and a dialog has Alt+keys for 19 settings
    hidden=("tile-size", "max-change", "seed", "tileable"),
)  # fmt: skip
FRAMES_LAYOUT = Layout(
    "DeepDream Frames",
    (("motion", "From frame to frame", ("flow", "blend", "steps-per-frame")),
     ("what", "What to dream", ("preset", "layers", "model")),
     ("how-much", "How much", ("strength", "steps", "octaves"))),
    left=("motion", "advanced"),
    right=("what", "how-much", "problem"),
    hidden=("tile-size", "max-change", "seed", "tileable"),  # as the zoom's
)  # fmt: skip
VISUALIZE_LAYOUT = Layout(
    "DeepDream Feature Visualization",
    (("what", "What to show", ("layer", "channel", "class", "model")),
     ("how-many", "Pictures", ("samples", "size", "layout")),
     ("photos", "Examples from your photos", ("exemplars-folder", "open-images")),
     ("look", "Their look", ("steps", "diversity", "tv", "frequency", "robustness"))),
    left=("what", "how-many", "photos"),
    right=("look", "advanced", "problem"),
    # The leash holds an accentuated photo to its own; these grow from noise. How many
    # exemplars each (4, or a script's) is Strongest Channels' to choose: here every letter
    # that one more setting could take is another's Alt+key already.
    hidden=("leash", "exemplars-each"),
)  # fmt: skip
CHANNELS_LAYOUT = Layout(
    "DeepDream Strongest Channels",
    (("what", "What to look at", ("layer", "top", "model")),
     ("photos", "Examples from your photos", ("exemplars-folder", "open-images",
                                               "exemplars-each")),
     ("look", "Their pictures", ("size", "steps", "param"))),
    left=("what", "photos"),
    right=("look", "advanced", "problem"),
)  # fmt: skip
ACCENTUATE_LAYOUT = Layout(
    "DeepDream Accentuate",
    (("what", "What to turn up", ("layer", "channel", "class", "model")),
     ("how-much", "How much", ("steps", "leash")),
     ("result", "The result", ("change-mask",))),
    left=("what", "how-much"),
    right=("result", "advanced", "problem"),
)  # fmt: skip
SLIDERS = ("steps", "octaves", "jitter", "frames", "steps-per-frame")
"""Whole numbers shown as sliders; every fraction is one too."""
HANDED_BY_GIMP = ("run-mode", "image", "drawables")
"""Arguments that GIMP fills in, which the artist never chooses."""


def dream_dialog(procedure, config, layout, drawable=None, check=None):
    """A dialog of the procedure's arguments laid out by `layout`, with a live preview of the
    drawable's dream when given. OK closes it only once `check` (the server, in its words)
    finds nothing against the settings; what it says stays under them, in red, until a setting
    changes. False when cancelled."""
    GimpUi.init(procedure.get_name())
    dialog = GimpUi.ProcedureDialog.new(procedure, config, layout.title)
    names = [arg.name for arg in procedure.get_arguments()
             if arg.name not in HANDED_BY_GIMP and arg.name not in layout.hidden]  # fmt: skip
    for argument in procedure.get_arguments():
        # every fraction a slider: GIMP's plain spin buttons want a range of 10 or more
        fraction = argument.value_type == GObject.TYPE_DOUBLE
        if argument.name in names and (argument.name in SLIDERS or fraction):
            dialog.get_widget(argument.name, GimpUi.SpinScale.__gtype__)
        elif argument.name in names and isinstance(argument, Gimp.ParamChoice):
            # a list also for two choices, which GIMP 3.2 makes radio buttons without Alt+keys
            dialog.get_widget(argument.name, Gtk.ComboBox.__gtype__)
    grouped = {name for _, _, members in layout.groups for name in members}
    advanced = [name for name in names if name not in grouped]
    for group_id, group_title, members in (*layout.groups, ("advanced", "Advanced", advanced)):
        dialog.fill_box(f"{group_id}-box", [name for name in members if name in names])
        dialog.get_label(f"{group_id}-title", group_title, False, False)
        fill = dialog.fill_expander if group_id == "advanced" else dialog.fill_frame
        fill(group_id, f"{group_id}-title", False, f"{group_id}-box")
    problem = wrapped(dialog.get_label("problem", "", True, False))
    live = DreamPreview(dialog, config, drawable) if drawable is not None else None
    for index, column in enumerate(layout.columns):
        members = [shown for item in column for shown in
                   (("preview", "preview-status") if item == "preview" else (item,))
                   if shown not in ("preview", "preview-status") or live is not None]  # fmt: skip
        dialog.fill_box(f"column-{index}", members).set_spacing(8)
    columns = dialog.fill_box("columns", ["column-0", "column-1"])
    columns.set_orientation(Gtk.Orientation.HORIZONTAL)
    columns.set_spacing(16)
    dialog.fill(["columns"])
    if "layers" in names:
        tie_layers_to_custom(config)
    changed = config.connect("notify", lambda *_: problem.set_markup(""))
    try:
        while dialog.run():
            if live is not None:
                live.cancel()  # the check would wait behind its render on the server
            refused = check() if check is not None else None
            if refused is None:
                return True
            if live is not None:
                live.widget.invalidate()
            problem.set_markup(
                f'<span foreground="#c01c28">{GLib.markup_escape_text(refused)}</span>'
            )
        return False
    finally:
        config.disconnect(changed)
        if live is not None:
            live.close()
        dialog.destroy()


def tie_layers_to_custom(config):
    """Typed layers belong to the custom preset, so that the preset shown is what is dreamed:
    typing layers chooses it, emptying them goes back to the preset chosen before, choosing
    another preset empties Layers, and remembered values that disagree open with the preset
    that the layers make."""
    chosen_before = config.get_property("preset")

    def layers_typed(*_):
        nonlocal chosen_before
        preset = config.get_property("preset")
        if (config.get_property("layers") or "").strip():
            if preset != CUSTOM_PRESET:
                chosen_before = preset
                config.set_property("preset", CUSTOM_PRESET)
        elif preset == CUSTOM_PRESET and chosen_before != CUSTOM_PRESET:
            config.set_property("preset", chosen_before)

    def preset_chosen(*_):
        if config.get_property("preset") != CUSTOM_PRESET and config.get_property("layers"):
            config.set_property("layers", "")

    layers_typed()
    config.connect("notify::layers", layers_typed)
    config.connect("notify::preset", preset_chosen)


def wrapped(label):
    """A label that wraps its lines (a server's message can be long) instead of widening the
    dialog past the screen, and keeps its width."""
    label.set_line_wrap(True)
    # as wide whatever it says: a column that changed width would resize the preview, which
    # then draws the layer again and asks for a new dream
    label.set_width_chars(40)
    label.set_max_width_chars(40)
    label.set_xalign(0.0)
    return label


def refusal(config, name="dream", of="submit", photo=None):
    """What the server says against the settings of `name` (dream, visualize, ...) for the
    request `of` (submit, visualize, channels), in one line, or None. `photo` (width, height):
    the photo an accentuation starts from."""
    try:
        with connect() as client:
            client.check(dream_params(config, load_parameters(name)), of=of, photo=photo)
    except DreamError as err:
        return str(err)
    return None


PREVIEW_NOTE = "Preview: at full size, as the dream will look here"
CONNECTION_FAILURES = {"dream_failed", "bad_token", "internal", UNREACHABLE, LOST}
"""Error codes after which the preview connects again rather than keep its connection."""
PREVIEW_CONTEXT = 32
"""Pixels around the previewed area that the network sees: enough for its edges to look like
the dream's there, half the dream's margin so that an update takes under a second on 2 cores."""
SETTLE_MS = 50


class DreamPreview:
    """The dialog's live preview: the dream of the previewed part of the layer at 1:1, with the
    context around it that the whole dream gives it, so it looks as the result will look there
    (DeepDream's patterns have a size in pixels: a scaled-down preview would show other ones).

    The server renders in a thread of this plug-in while the dialog stays responsive; GIMP's
    preview waits for changes to settle before asking again, and a newer request cancels the one
    under way on the server. The Preview check-box switches it off. The image is never touched.
    """

    def __init__(self, dialog, config, drawable):
        self.config = config
        self.drawable = drawable
        self.widget = dialog.get_drawable_preview("preview", drawable)
        # Its own size, whatever its column does: a preview that grows draws the layer again
        # and asks for a new dream, which, beside settings that re-flow, never ends.
        self.widget.set_hexpand(False)
        self.widget.set_vexpand(False)
        self.widget.set_halign(Gtk.Align.START)
        self.widget.set_valign(Gtk.Align.START)
        self.status = wrapped(dialog.get_label("preview-status", PREVIEW_NOTE, False, False))
        self.babl_format, self.channels = preview_format(drawable)
        self._wanted = None
        self._generation = 0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._render_requests, daemon=True)
        self._thread.start()
        self._settling = None
        self._shown = None
        self._params = dream_params(config, load_parameters())
        self._centred = False
        self.widget.connect("invalidated", self._ask)  # opened, scrolled, switched on
        self._notify = config.connect("notify", self._setting_changed)

    def _centre_on_selection(self):
        """Open on the middle of the selection (of the layer without one), where the subject
        usually is, rather than on the top-left corner of its bounds; once the preview has its
        size, which it has by its first drawing."""
        self._centred = True
        _, x, y, width, height = self.drawable.mask_intersect()
        shown_width, shown_height = self.widget.get_size()
        self.widget.set_position(max(0, x + (width - shown_width) // 2),
                                 max(0, y + (height - shown_height) // 2))  # fmt: skip

    def _setting_changed(self, *_):
        """Show the layer as it is at once (the dream shown was of other settings), and ask
        again once the settings have been still for SETTLE_MS (a dragged slider changes them
        many times a second); sooner than GIMP's own 200 ms wait for invalidated previews."""
        params = dream_params(self.config, load_parameters())
        if params == self._params:
            return  # told of a setting that kept its value
        self._params = params
        with self._changed:
            self._generation += 1  # what is under way was for the settings before
        if self._shown is not None and self.widget.get_update():
            pixels, width = self._shown
            self.widget.draw_buffer(pixels, width * self.channels)
            self.status.set_text("Preview: dreaming with the new settings...")
        if self._settling is not None:
            GLib.source_remove(self._settling)
        self._settling = GLib.timeout_add(SETTLE_MS, self._settled)

    def _settled(self):
        self._settling = None
        if self.widget.get_update():  # the Preview check-box is on
            self._ask(self.widget)
        return False

    def _ask(self, widget):
        """GIMP wants the preview drawn again: read the pixels here (GIMP's calls belong to
        this thread) and hand the request to the render thread."""
        if not self._centred:
            self._centre_on_selection()
        x, y = widget.get_position()
        width, height = widget.get_size()
        region = Region(self.drawable, x, y, width, height, PREVIEW_CONTEXT)
        pixels = read(self.drawable, region.context, self.babl_format)
        self._shown = (region.crop(pixels, self.channels, 1), width)
        params = dream_params(self.config, load_parameters())
        # A tileable dream wraps at the layer's edges, not at the preview's: the preview shows
        # the dream as it will look in the middle.
        params["tileable"] = False
        with self._changed:
            self._generation += 1
            self._wanted = (self._generation, region, pixels, params)
            self._changed.notify()

    def _render_requests(self):
        client = None
        try:
            while True:
                with self._changed:
                    while self._wanted is None and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    (generation, region, pixels, params), self._wanted = self._wanted, None
                client = client or self._connect(generation)
                if client is None:
                    continue
                try:
                    self._render(client, generation, region, pixels, params)
                except Exception as err:  # the connection failed: connect again next time
                    self._say(generation, f"Preview: {first_sentence(str(err))}")
                    client.close()
                    client = None
        finally:
            if client is not None:
                client.close()

    def _connect(self, generation):
        self._say(generation, "Preview: waiting for the dream server...")
        try:
            return connect()
        except DreamError as err:
            self._say(generation, f"Preview: {err}")
            return None

    def _render(self, client, generation, region, pixels, params):
        def show(progress):
            self._say(generation, f"Preview: {progress.describe()}")

        started = time.monotonic()
        try:
            dreamed = client.dream(pixels, region.context[2], region.context[3], self.channels,
                                   params, on_progress=show,
                                   should_stop=lambda: generation != self._generation)  # fmt: skip
        except DreamCancelled:
            return
        except DreamError as err:
            if err.code in CONNECTION_FAILURES:
                raise
            # the settings: said in full under them when OK is pressed
            self._say(generation, f"Preview: {first_sentence(str(err))}")
            return
        seconds = time.monotonic() - started
        shown = region.crop(dreamed, self.channels, 1)
        GLib.idle_add(self._draw, generation, shown, region.selection[2], seconds)

    def _draw(self, generation, pixels, width, seconds):
        if generation == self._generation and not self._closed and self.widget.get_update():
            self.widget.draw_buffer(pixels, width * self.channels)
            self.status.set_text(f"{PREVIEW_NOTE} ({seconds:.1f} s)")
        return False

    def _say(self, generation, text):
        def update():
            if generation == self._generation and not self._closed:
                self.status.set_text(text)
            return False

        GLib.idle_add(update)

    def cancel(self):
        """Cancel the render under way, if any."""
        with self._changed:
            self._generation += 1
            self._wanted = None

    def close(self):
        """Cancel what is under way and let the render thread end."""
        self.config.disconnect(self._notify)
        if self._settling is not None:
            GLib.source_remove(self._settling)
        with self._changed:
            self._closed = True
            self._generation += 1
            self._changed.notify()
        self._thread.join(timeout=5)


def first_sentence(message):
    sentence, stop, _ = message.partition(". ")
    return sentence + stop.strip()


def preview_format(drawable):
    """The 8-bit format of the drawable's own type, which is what GIMP's preview draws."""
    gray = drawable.is_gray()
    name = ("Y'" if gray else "R'G'B'") + ("A" if drawable.has_alpha() else "") + " u8"
    return name, (1 if gray else 3) + (1 if drawable.has_alpha() else 0)


def dream_params(config, parameters):
    values = {param["name"]: config.get_property(param["name"]) for param in parameters}
    for param in parameters:  # GIMP hands back an empty text argument as None
        if param["kind"] == "string" and values[param["name"]] is None:
            values[param["name"]] = ""
    return values


DREAM_LAYER_SUFFIX = " · DeepDream"


def layer_name(params, parameters):
    """What was dreamed, the words that tell dreams apart first: `animals 4x10 · DeepDream`."""
    subject = params["layers"].strip() or params["preset"]
    words = [subject, "{}x{}".format(params["octaves"], params["steps"])]
    default_model = next(p["default"] for p in parameters if p["name"] == "model")
    if params["model"] != default_model:
        words.append(params["model"])
    if params.get("tileable"):
        words.append("tileable")
    return " ".join(words) + DREAM_LAYER_SUFFIX


def run(procedure, run_mode, image, drawables, config, data):
    return guarded(procedure, dream_on, procedure, run_mode, image, drawables, config)


def run_zoom(procedure, run_mode, image, drawables, config, data):
    return guarded(procedure, zoom_on, procedure, run_mode, image, drawables, config)


def run_channels(procedure, run_mode, image, drawables, config, data):
    return guarded(procedure, channels_on, procedure, run_mode, image, drawables, config)


def run_accentuate(procedure, run_mode, image, drawables, config, data):
    return guarded(procedure, accentuate_on, procedure, run_mode, image, drawables, config)


def run_visualize(procedure, config, data):
    return guarded(procedure, visualize, procedure, config)


def guarded(procedure, work, *args):
    try:
        return work(*args)
    except DreamError as err:
        return failure(procedure, str(err))
    except Exception as err:  # nothing may reach GIMP uncaught: it would show the user nothing
        return failure(
            procedure,
            f"DeepDream failed unexpectedly ({type(err).__name__}: {err}). The image was not "
            f"changed. See {log_path()} and report it.",
        )


def failure(procedure, message):
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def source_layer(image, drawables, purpose):
    """The one layer to work on (a layer mask given stands for its layer); else a DreamError
    that says what to select."""
    if len(drawables) == 1 and isinstance(drawables[0], Gimp.LayerMask):
        drawables = [Gimp.Layer.from_mask(drawables[0])]  # the mask's layer is what is meant
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer):
        raise DreamError(f"Select exactly one layer to {purpose}.")
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise DreamError(
            "DeepDream needs an RGB or grayscale image: convert it with Image > Mode > RGB first."
        )
    return drawables[0]


def how_selected(image, source, bounds):
    """How selected each pixel of `bounds` (x, y, width, height) of the layer is, as Y u8
    bytes (feathered edges in between); None without a selection."""
    if Gimp.Selection.is_empty(image):
        return None
    x, y, width, height = bounds
    offset_x, offset_y = source.get_offsets()[1:]
    return bytes(read(image.get_selection(), (offset_x + x, offset_y + y, width, height), "Y u8"))


def selection_bounds(source, purpose):
    """(x, y, width, height) of the selection's bounds on the layer (all of it without a
    selection); a DreamError that says what to do where the selection misses the layer."""
    inside, x, y, width, height = source.mask_intersect()
    if not inside:
        raise DreamError("The selection does not touch this layer: select part of it, or "
                         f"Select > None to {purpose} all of it.")  # fmt: skip
    return x, y, width, height


def dream_on(procedure, run_mode, image, drawables, config):
    source = source_layer(image, drawables, "dream on")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    remembered = remembered_dream(source)
    if remembered is not None:
        origin = image.get_layer_by_tattoo(remembered.get("source") or 0)
        if origin is not None and origin != source:
            return redream(procedure, run_mode, image, source, origin, remembered, config)
        if not on_it_itself(remembered, "dream", "dream layer", "dream on", interactive):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    if interactive and not dream_dialog(procedure, config, DREAM_LAYOUT, source,
                                        check=lambda: refusal(config)):  # fmt: skip
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    parameters = load_parameters()
    params = dream_params(config, parameters)
    selection_mode = config.get_property("selection-mode")
    has_selection = not Gimp.Selection.is_empty(image)
    x, y, width, height = selection_bounds(source, "dream on")
    region = dream_region(source, params, (x, y, width, height))
    babl_format, channels, item_size = pixel_format(image)

    # All slow work happens before the image is touched: a cancel (GIMP kills this process)
    # or a failure leaves the image exactly as it was.
    pixels = dreamed_pixels(source, region, params, babl_format, channels, item_size)
    if not source.is_valid():
        return failure(procedure, "The layer was deleted while it was being dreamed on.")
    Gimp.progress_set_text("DeepDream: adding the layer")
    image.undo_group_start()
    layer = None
    try:
        name = layer_name(params, parameters)
        layer = add_layer(image, source, region, pixels, babl_format, name)
        remember_dream(layer, source, region, params, selection_mode if has_selection else None)
        if has_selection:
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
            if selection_mode == "alpha":
                layer.remove_mask(Gimp.MaskApplyMode.APPLY)
        # GIMP makes a new mask the active drawable; the layer is, so that Ctrl+F dreams again.
        if layer.get_mask() is not None:
            layer.set_edit_mask(False)
        image.set_selected_layers([layer])
    except Exception:
        if layer is not None and layer.is_valid():  # leave no half-made layer behind
            image.remove_layer(layer)
        raise
    finally:
        image.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()
    return succeeded(procedure, Gimp.Layer, layer)


def dream_region(source, params, selection_bounds):
    """The part of `source` a dream covers: the selection's bounds, or for a tileable dream
    the whole layer (it wraps at the layer's edges), with context around it."""
    if params.get("tileable"):
        selection_bounds = (0, 0, source.get_width(), source.get_height())
    return Region(source, *selection_bounds)


def dreamed_pixels(source, region, params, babl_format, channels, item_size):
    """The dream of `region` of `source`, cut to the selection's bounds, with progress in
    GIMP's status bar; nothing of the image is touched."""
    Gimp.progress_init("DeepDream: waiting for the dream server")
    context_pixels = read(source, region.context, babl_format)
    with connect() as client:
        dreamed = client.dream(
            context_pixels,
            region.context[2],
            region.context[3],
            channels,
            params,
            on_progress=shown_in_status_bar("DeepDream"),
        )
    return region.crop(dreamed, channels, item_size)


def shown_in_status_bar(title):
    """A progress callback for GIMP's progress bar and status text: `DeepDream Zoom: frame
    3/30, octave 2/4, step 7/10, 40 s left`."""

    def show(progress):
        Gimp.progress_update(progress.fraction)
        left = "" if progress.seconds_left is None else f", {progress.seconds_left:.0f} s left"
        Gimp.progress_set_text(f"{title}: {progress.describe()}{left}")

    return show


DREAM_PARASITE = "deepdream-dream"
"""What a dream layer remembers of how it was made, saved with it in XCF files: a JSON object
of `params` (the dream parameters by their schema names, as the server takes them), the
`source` layer's tattoo and `source-name`, the `selection` bounds dreamed, in the source
layer's pixels, and the `selection-mode` the selection became (none without a selection)."""


def remember_dream(layer, source, region, params, selection_mode):
    record = {"params": params, "source": source.get_tattoo(), "source-name": source.get_name(),
              "selection": list(region.selection), "selection-mode": selection_mode}  # fmt: skip
    remember(layer, DREAM_PARASITE, record)


def remembered_dream(layer):
    """The record `remember_dream` left on the layer, or None for a layer that is no dream."""
    return remembered(layer, DREAM_PARASITE, {"params": dict})


def restore(config, parameters, values):
    """Set the settings among `parameters` to the remembered `values` (by name), so that the
    dialog opens with them; a name this release no longer has is left out."""
    known = {param["name"] for param in parameters}
    for name, value in values.items():
        if name in known:
            config.set_property(name, value)


def remember(item, name, record):
    """Keep `record` (JSON) on a layer or an image, in XCF files too, undoably."""
    flags = Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE
    item.attach_parasite(Gimp.Parasite.new(name, flags, list(json.dumps(record).encode())))


def remembered(item, name, fields):
    """The record kept as `name` on a layer or an image, if it is one: a JSON object with
    `fields` of their types; else None."""
    parasite = item.get_parasite(name)
    if parasite is None:
        return None
    try:
        record = json.loads(bytes(parasite.get_data()))
    except ValueError:
        return None
    if isinstance(record, dict) and all(isinstance(record.get(k), t) for k, t in fields.items()):
        return record
    return None


def redream(procedure, run_mode, image, layer, origin, remembered, config):
    """Dream `layer` again, in place, from `origin`'s pixels as they are now: the same layer,
    where it is, with its mask; its name and memory follow the new settings. One undo step."""
    parameters = load_parameters()
    if run_mode == Gimp.RunMode.INTERACTIVE:  # the dialog opens with this dream's settings
        restore(config, parameters, remembered["params"])
        if not dream_dialog(procedure, config, DREAM_LAYOUT, origin,
                            check=lambda: refusal(config)):  # fmt: skip
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    params = dream_params(config, parameters)
    selection = remembered.get("selection") or (0, 0, origin.get_width(), origin.get_height())
    region = dream_region(origin, params, tuple(selection))
    x, y, width, height = region.selection
    if (width, height) != (layer.get_width(), layer.get_height()):
        raise DreamError(
            f"This dream covers {layer.get_width()}x{layer.get_height()} pixels and its new "
            f"settings {width}x{height} (tileable or not): dream on {origin.get_name()} anew."
        )
    babl_format, channels, item_size = pixel_format(image)
    pixels = dreamed_pixels(origin, region, params, babl_format, channels, item_size)
    if not layer.is_valid():
        return failure(procedure, "The layer was deleted while it was being dreamed on.")
    if remembered.get("selection-mode") == "alpha":  # the selection baked into its alpha stays
        before = read(layer, (0, 0, width, height), babl_format)
        pixels = alpha_kept(pixels, before, channels, item_size)
    Gimp.progress_set_text("DeepDream: dreaming the layer again")
    image.undo_group_start()
    try:
        replace_pixels(image, layer, babl_format, pixels)
        layer.set_name(layer_name(params, parameters))
        remember_dream(layer, origin, region, params, remembered.get("selection-mode"))
    finally:
        image.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()
    return succeeded(procedure, Gimp.Layer, layer)


def alpha_kept(pixels, before, channels, item_size):
    """`pixels` with the alpha of `before`: both in one babl format, alpha its last channel."""
    combined = bytearray(pixels)
    stride = channels * item_size
    for byte in range((channels - 1) * item_size, stride):
        combined[byte::stride] = before[byte::stride]
    return bytes(combined)


def replace_pixels(image, drawable, babl_format, pixels):
    """All of `drawable`'s pixels, a layer's or a mask's, replaced undoably (inside the caller's
    undo group): a shadow buffer merged as filters do, through the selection, which steps
    aside meanwhile since the whole drawable is new."""
    width, height = drawable.get_width(), drawable.get_height()
    selection = None if Gimp.Selection.is_empty(image) else Gimp.Selection.save(image)
    try:
        if selection is not None:
            Gimp.Selection.none(image)
        shadow = drawable.get_shadow_buffer()
        shadow.set(Gegl.Rectangle.new(0, 0, width, height), babl_format, bytes(pixels))
        shadow.flush()
        drawable.merge_shadow(True)
        drawable.update(0, 0, width, height)
    finally:
        if selection is not None:
            image.select_item(Gimp.ChannelOps.REPLACE, selection)
            image.remove_channel(selection)


def on_it_itself(record, made, layer_noun, verb, interactive):
    """Whether to work on a layer DeepDream made (`made`: "dream") whose source layer is gone
    as on any other layer, into a new one: a script is told what to do instead, an artist is
    asked."""
    gone = (f"The layer this {made} was made from ({record.get('source-name')}) is not in this "
            "image any more")  # fmt: skip
    if not interactive:
        raise DreamError(f"{gone}: to {verb} the {made} itself, {verb} a copy of it made with "
                         "Layer > New from Visible.")  # fmt: skip
    GimpUi.init("deepdream")
    question = Gtk.MessageDialog(
        title="DeepDream", modal=True, message_type=Gtk.MessageType.QUESTION, text=f"{gone}.",
        secondary_text=f"{verb.capitalize()} this {layer_noun} itself, into a new layer?",
    )  # fmt: skip
    question.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    question.add_button(f"_{verb.capitalize()} it", Gtk.ResponseType.OK)
    question.set_default_response(Gtk.ResponseType.OK)
    answer = question.run()
    question.destroy()
    return answer == Gtk.ResponseType.OK


def add_layer(image, source, region, pixels, babl_format, name):
    """The new layer above the source and above the dreams already above it, so that it shows,
    covering the selection's bounds."""
    x, y, width, height = region.selection
    offset_x, offset_y = source.get_offsets()[1:]
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    kind = Gimp.ImageType.GRAYA_IMAGE if gray else Gimp.ImageType.RGBA_IMAGE
    layer = Gimp.Layer.new(image, name, width, height, kind, 100.0, Gimp.LayerMode.NORMAL)
    parent = source.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    position = image.get_item_position(source)
    # GIMP numbers repeated names ("... · DeepDream #1")
    while position > 0 and DREAM_LAYER_SUFFIX in siblings[position - 1].get_name():
        position -= 1
    if not image.insert_layer(layer, parent, position):
        raise RuntimeError("GIMP refused to insert the new layer")
    layer.set_offsets(offset_x + x, offset_y + y)
    buffer = layer.get_buffer()
    # bytes, not the client's memoryview: PyGObject walks a memoryview element by element
    # (1.4 s for 4000x3000 RGBA, against 0.03 s for this copy).
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), babl_format, bytes(pixels))
    buffer.flush()
    layer.update(0, 0, width, height)
    return layer


def zoom_on(procedure, run_mode, image, drawables, config):
    """Filters > Animation > DeepDream Zoom: a new image whose layers are the frames of an
    endless zoom into the layer (the selection's part of it), named with GIMP's frame delays so
    that Filters > Animation > Playback plays it and export writes an animated GIF or WebP. The
    new image is made once every frame is back: a cancelled zoom leaves nothing behind."""
    source = source_layer(image, drawables, "zoom into")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    remembered = remembered_zoom(image)
    if remembered is not None and interactive:  # the dialog opens with that zoom's settings
        values = {**remembered["params"], **remembered["zoom"]}
        values.pop("frames", None)  # how many more frames is asked anew
        restore(config, load_parameters() + load_parameters("zoom"), values)
    if interactive and not dream_dialog(procedure, config, ZOOM_LAYOUT,
                                        check=lambda: refusal(config)):  # fmt: skip
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    params = dream_params(config, load_parameters())
    zoom = dream_params(config, load_parameters("zoom"))
    if remembered is not None:
        return go_on_zooming(procedure, image, remembered, params, zoom, interactive)
    x, y, width, height = selection_bounds(source, "zoom into")
    check_held_frames(zoom["frames"], width, height, 3, "choose fewer frames or a smaller "
                      "selection, or run `deepdream zoom`, which writes each frame to disk as it "
                      "comes.")  # fmt: skip
    pixels = read(source, (x, y, width, height), "R'G'B' u8")
    frames = {}
    Gimp.progress_init("DeepDream Zoom: waiting for the dream server")
    with connect() as client:
        seconds = client.estimate("animate", params, width, height, zoom)
        if not worth_the_wait("DeepDream Zoom", f"{zoom['frames']} frames", seconds, interactive):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

        size = zoom_frames(client, frames, pixels, width, height, params, zoom)
    delay = round(1000 / zoom["fps"])
    # The first frame at the bottom, as Playback plays them; GIMP reads each delay from the name.
    layers = [(f"Frame {index + 1} ({delay}ms)", frames[index]) for index in sorted(frames)]
    movie = new_image(*size, reversed(layers))
    titled(movie, "zoom", source)
    remember_zoom(movie, params, zoom, len(layers))
    Gimp.progress_end()
    if interactive:
        Gimp.Display.new(movie)
    return succeeded(procedure, Gimp.Image, movie)


def frames_on(procedure, run_mode, image, drawables, config):
    """Filters > Animation > DeepDream Frames: every layer of an image whose layers are the
    frames of an animation, dreamed from the bottom one up as `deepdream video` dreams a clip
    (each from its source with the last one's dream carried along the motion), into a new
    image whose layers have the same names (so the same frame delays), offsets and order. The
    new image is made once every frame is back: a cancel leaves nothing behind."""
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise DreamError("DeepDream needs an RGB or grayscale image: convert it with Image > "
                         "Mode > RGB first.")  # fmt: skip
    frames = list(reversed(image.get_layers()))  # the first frame is the bottom layer
    if len(frames) < 2:
        raise DreamError(
            "DeepDream Frames dreams an animation, whose frames are the image's layers (an "
            "opened GIF or WebP, or frames opened with File > Open as Layers); this image has "
            "one layer: use Filters > Artistic > DeepDream."
        )
    width, height = frames[0].get_width(), frames[0].get_height()
    for frame in frames:
        if (frame.get_width(), frame.get_height()) != (width, height):
            raise DreamError(
                f"The frames are not all {width}x{height} ({frame.get_name()} is "
                f"{frame.get_width()}x{frame.get_height()}): make every frame whole with Filters "
                "> Animation > Unoptimize first."
            )
    # each frame read as RGBA and dreamed as RGB: 7 bytes a pixel
    check_held_frames(len(frames), width, height, 7, "scale the image down, or dream the "
                      "frames as a video with `deepdream video`.")  # fmt: skip
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    if interactive and not dream_dialog(procedure, config, FRAMES_LAYOUT,
                                        check=lambda: refusal(config)):  # fmt: skip
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    params = dream_params(config, load_parameters())
    steady = dream_params(config, load_parameters("frames"))
    sources = [read(frame, (0, 0, width, height), "R'G'B'A u8") for frame in frames]
    dreamed = {}
    Gimp.progress_init("DeepDream Frames: waiting for the dream server")
    with connect() as client:

        def keep(index, count, frame):
            dreamed[index] = bytes(frame)

        colours = [without_alpha(pixels) for pixels in sources]
        client.steady(
            colours,
            width,
            height,
            params,
            steady,
            keep,
            on_progress=shown_in_status_bar(FRAMES_LAYOUT.title),
        )
    movie = Gimp.Image.new(image.get_width(), image.get_height(), Gimp.ImageBaseType.RGB)
    try:
        movie.undo_disable()  # a new image: nothing to undo
        for index, frame in enumerate(frames):  # each new one on top: the order is kept
            layer = Gimp.Layer.new(movie, frame.get_name(), width, height,
                                   Gimp.ImageType.RGBA_IMAGE, frame.get_opacity(),
                                   Gimp.LayerMode.NORMAL)  # fmt: skip
            movie.insert_layer(layer, None, 0)
            layer.set_offsets(*frame.get_offsets()[1:])
            pixels = with_alpha(dreamed[index], sources[index])
            buffer = layer.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, width, height), "R'G'B'A u8", pixels)
            buffer.flush()
        movie.undo_enable()
    except Exception:
        movie.delete()
        raise
    titled(movie, "dream", frames[0])
    Gimp.progress_end()
    if interactive:
        Gimp.Display.new(movie)
    return succeeded(procedure, Gimp.Image, movie)


def without_alpha(rgba):
    """RGB u8 bytes of RGBA u8 ones (with no numpy: GIMP's own Python may have none)."""
    rgb = bytearray(len(rgba) // 4 * 3)
    for channel in range(3):
        rgb[channel::3] = rgba[channel::4]
    return bytes(rgb)


def with_alpha(rgb, alpha, alpha_from=4):
    """RGBA u8 pixels of the colours `rgb` and the alpha of `alpha`: RGBA pixels (`alpha_from`
    4), whose alpha stays as it was, or one channel (1)."""
    combined = bytearray(len(rgb) // 3 * 4)
    combined[3::4] = alpha[alpha_from - 1 :: alpha_from]
    for channel in range(3):
        combined[channel::4] = rgb[channel::3]
    return bytes(combined)


def run_frames(procedure, run_mode, image, drawables, config, data):
    return guarded(procedure, frames_on, procedure, run_mode, image, drawables, config)


ZOOM_PARASITE = "deepdream-zoom"
"""What a zoom's image remembers of how it was made, saved with it in XCF files: a JSON object
of the dream's `params`, the camera's `zoom` settings, and how many `frames` it has."""


def remember_zoom(movie, params, zoom, frames):
    remember(movie, ZOOM_PARASITE, {"params": params, "zoom": zoom, "frames": frames})


def remembered_zoom(image):
    """The record `remember_zoom` left on a zoom's image, or None for another image."""
    return remembered(image, ZOOM_PARASITE, {"params": dict, "zoom": dict, "frames": int})


def check_held_frames(count, width, height, bytes_per_pixel, way_out):
    """A DreamError, before any work, where frames would hold more than ZOOM_MEMORY_LIMIT
    while they wait in the plug-in (see there)."""
    held = count * width * height * bytes_per_pixel
    if held > ZOOM_MEMORY_LIMIT:
        raise DreamError(
            f"{count} frames of {width}x{height} would hold {held / 1e9:.1f} GB until they are "
            f"in the image (at most {ZOOM_MEMORY_LIMIT / 1e9:.0f} GB): {way_out}"
        )


def zoom_frames(client, frames, pixels, width, height, params, zoom, after=0):
    """Have the server dream a zoom from the RGB pixels (the last of `after` frames made before),
    keeping each frame in `frames` by its index as it comes; returns the frames' size."""

    def keep(index, count, frame):
        frames[index] = bytes(frame)

    return client.animate(pixels, width, height, 3, params, zoom, keep, after=after,
                          on_progress=shown_in_status_bar(ZOOM_LAYOUT.title))  # fmt: skip


def go_on_zooming(procedure, movie, remembered, params, zoom, interactive):
    """DeepDream Zoom on a zoom's image: `zoom["frames"]` more frames from its last one (the
    top layer), added on top as one longer zoom would have them, in one undo step."""
    last = movie.get_layers()[0]
    made = remembered["frames"]
    width, height = last.get_width(), last.get_height()
    check_held_frames(zoom["frames"], width, height, 3, "ask for fewer.")
    pixels = read(last, (0, 0, width, height), "R'G'B' u8")
    frames = {}
    Gimp.progress_init("DeepDream Zoom: waiting for the dream server")
    with connect() as client:
        zoom_frames(client, frames, pixels, width, height, params, zoom, after=made)
    fps = remembered["zoom"].get("fps") or zoom["fps"]  # the animation plays at one speed
    delay = round(1000 / fps)
    movie.undo_group_start()
    try:
        for index in sorted(frames):  # each on top of the last
            name, kind = f"Frame {index + 1} ({delay}ms)", Gimp.ImageType.RGB_IMAGE
            layer = Gimp.Layer.new(movie, name, width, height, kind, 100.0, Gimp.LayerMode.NORMAL)
            movie.insert_layer(layer, None, 0)
            buffer = layer.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, width, height), "R'G'B' u8", frames[index])
            buffer.flush()
        remember_zoom(movie, params, {**zoom, "fps": fps}, made + len(frames))
    finally:
        movie.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()
    return succeeded(procedure, Gimp.Image, movie)


ASK_OVER_S = 180
"""A job expected to take longer is started only once the artist says so."""


def worth_the_wait(title, what, seconds, interactive):
    """Say in the status bar about how long the job will take on this server (from how long
    its last jobs took), and ask before one of over ASK_OVER_S; False when the artist says no."""
    if seconds is None:  # the server has not done such a job yet
        Gimp.progress_set_text(f"{title}: {what}, the first of its kind on this server")
        return True
    Gimp.progress_set_text(f"{title}: {what}, {about(seconds)}")
    if not interactive or seconds <= ASK_OVER_S:
        return True
    question = Gtk.MessageDialog(
        title=title, modal=True, message_type=Gtk.MessageType.QUESTION,
        text=f"{what.capitalize()} will take {about(seconds)} on this dream server.",
        secondary_text="That is what its last jobs of this kind took. Fewer frames, steps or "
        "a smaller size go faster.",
    )  # fmt: skip
    question.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    question.add_button("_Go ahead", Gtk.ResponseType.OK)
    question.set_default_response(Gtk.ResponseType.OK)
    answer = question.run()
    question.destroy()
    return answer == Gtk.ResponseType.OK


def about(seconds):
    """`about 40 s`, `about 12 minutes`, `about 2.5 hours`."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} minutes"
    return f"about {seconds / 3600:.1f} hours"


def new_image(width, height, layers):
    """A new RGB image of the (name, RGB u8 pixels) layers, the first on top; deleted again if
    it cannot be completed."""
    image = Gimp.Image.new(width, height, Gimp.ImageBaseType.RGB)
    try:
        image.undo_disable()  # a new image: nothing to undo
        remember(image, MADE_HERE, {})
        for position, (name, pixels) in enumerate(layers):
            kind = Gimp.ImageType.RGB_IMAGE
            layer = Gimp.Layer.new(image, name, width, height, kind, 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(layer, None, position)
            buffer = layer.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, width, height), "R'G'B' u8", bytes(pixels))
            buffer.flush()
        image.undo_enable()
    except Exception:
        image.delete()
        raise
    return image


def titled(image, title, source=None):
    """Name a new image after what it is, which GIMP shows in its title instead of
    "[Untitled]": as the file that Save proposes, `chelsea zoom.xcf` for the `source` layer's,
    beside its image's file where GIMP knows one (a script's images may have none), else in
    Pictures. Nothing is saved, and closing it still asks."""
    path = file_of(source.get_image()) if source is not None else None
    if source is not None:
        title = f"{os.path.splitext(os.path.basename(path or source.get_name()))[0]} {title}"
    if path is not None:
        folder = os.path.dirname(path)
    else:
        pictures = GLib.get_user_special_dir(GLib.UserDirectory.DIRECTORY_PICTURES)
        folder = pictures or GLib.get_home_dir()
    name = title.replace("/", "-").replace(os.sep, "-") + ".xcf"
    image.set_file(Gio.File.new_for_path(os.path.join(folder, name)))


def file_of(image):
    """The path of the file the image was opened from, saved as or exported to, if any."""
    files = (image.get_file(), image.get_xcf_file(), image.get_imported_file(),
             image.get_exported_file())  # fmt: skip
    for file in files:
        if file is not None and file.get_path():
            return file.get_path()
    return None


def succeeded(procedure, kind, value, *texts):
    """The procedure's return values: success, the new layer or image, and any texts after."""
    result = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    returned = [(kind, value)] + [(GObject.TYPE_STRING, text) for text in texts]
    for index, (value_type, content) in enumerate(returned, 1):
        result.remove(index)
        result.insert(index, GObject.Value(value_type, content))
    return result


def visualize(procedure, config):
    """File > Create > DeepDream Feature Visualization: a new image, one layer per sample (and
    one per patch of the artist's photos that excites the channel most), or one sheet."""
    interactive = config.get_property("run-mode") == Gimp.RunMode.INTERACTIVE
    check = lambda: refusal(config, "visualize", "visualize")  # noqa: E731
    if interactive and not dream_dialog(procedure, config, VISUALIZE_LAYOUT, check=check):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    params = dream_params(config, load_parameters("visualize"))
    sheet = config.get_property("layout") == "sheet"
    Gimp.progress_init("DeepDream: rendering from noise")
    exemplars = exemplar_photos(config)
    if exemplars and params["channel"] < 0:
        raise DreamError("Patches of your photos show what excites one channel: choose a "
                         "Channel (0 or more), or no folder and no open images.")  # fmt: skip
    with connect() as client:
        seconds = client.estimate("visualize", params)
        pictures = f"{params['samples']} pictures"
        if not worth_the_wait(VISUALIZE_LAYOUT.title, pictures, seconds, interactive):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

        def show(progress):
            Gimp.progress_update(progress.fraction)
            Gimp.progress_set_text(f"DeepDream: rendering from noise, {progress.describe()}")

        width, height, samples = client.visualize(params, on_progress=show, sheet=sheet,
                                                  exemplars=exemplars)  # fmt: skip
    image = new_image(width, height, samples)  # the first sample on top
    # the unit the samples show, as their names say it: "block7/5 #1", "block7/5 · 4 samples"
    unit = samples[0][0].split(" #")[0].split(" · ")[0]
    titled(image, f"{unit} feature visualization")
    Gimp.progress_end()
    if interactive:
        Gimp.Display.new(image)
    return succeeded(procedure, Gimp.Image, image)


def channels_on(procedure, run_mode, image, drawables, config):
    """File > Create > DeepDream Strongest Channels: which channels of a layer of the network the
    selection excites most, as a new image: a labelled sheet of what each looks for, each label
    the text that dreams it when typed into Layers (`block7/42`), beside each the patches of
    the artist's photos that excite it most."""
    source = source_layer(image, drawables, "look at")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    check = lambda: refusal(config, "channels", "channels")  # noqa: E731
    if interactive and not dream_dialog(procedure, config, CHANNELS_LAYOUT, check=check):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    which = dream_params(config, load_parameters("channels"))
    look = {**dream_params(config, load_parameters("sheet-look")), "model": which["model"],
            "layer": which["layer"]}  # fmt: skip
    x, y, width, height = selection_bounds(source, "look at")
    pixels = read(source, (x, y, width, height), "R'G'B' u8")
    selection = how_selected(image, source, (x, y, width, height))
    Gimp.progress_init("DeepDream: looking at the channels")
    exemplars = exemplar_photos(config)
    with connect() as client:
        strongest = client.strongest_channels(bytes(pixels), width, height, 3, which,
                                              mask=selection)  # fmt: skip
        channels = [found["channel"] for found in strongest]
        seconds = client.estimate("visualize", look, count=len(channels))
        if not worth_the_wait(CHANNELS_LAYOUT.title, f"{len(channels)} pictures", seconds,
                              interactive):  # fmt: skip
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        sheet_width, sheet_height, [(_, sheet)] = client.visualize(
            look, on_progress=shown_in_status_bar("DeepDream Strongest Channels"), sheet=True,
            channels=channels, exemplars=exemplars,
        )  # fmt: skip
    shares = ", ".join(f"{found['label']} {found['share']:.1%}" for found in strongest)
    sheet_image = new_image(sheet_width, sheet_height, [(shares, sheet)])
    titled(sheet_image, f"{which['layer']} channels", source)
    Gimp.progress_end()
    if interactive:
        Gimp.Display.new(sheet_image)
    return succeeded(procedure, Gimp.Image, sheet_image, shares)


def exemplar_photos(config):
    """(name, RGB u8 pixels, width, height, 3) of the photos in the folder chosen and, when
    asked, of the images open in GIMP, each scaled to EXEMPLAR_SEND_SIDE at most; files GIMP
    cannot open are left out."""
    photos = []
    folder = config.get_property("exemplars-folder")
    if folder is not None and folder.get_path():
        path = folder.get_path()
        if not os.path.isdir(path):
            raise DreamError(f"{path} is not a folder: choose the folder of your photos.")
        names = sorted(name for name in os.listdir(path) if not name.startswith("."))
        if len(names) > MAX_LISTED_FRAMES:
            raise DreamError(f"{path} holds {len(names)} files; at most {MAX_LISTED_FRAMES} "
                             "photos can be looked through: choose a smaller folder.")  # fmt: skip
        for name in names:
            Gimp.progress_set_text(f"DeepDream: reading {name}")
            try:
                file = Gio.File.new_for_path(os.path.join(path, name))
                opened = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, file)
            except GLib.Error:  # not an image GIMP opens
                continue
            if opened is not None:
                try:
                    photos.append((name, *composite(opened, EXEMPLAR_SEND_SIDE)))
                finally:
                    opened.delete()
        if not photos:
            raise DreamError(f"{path} holds no images GIMP can open: choose the folder of your "
                             "photos.")  # fmt: skip
    if config.get_property("open-images"):
        for image in Gimp.get_images():
            if remembered(image, MADE_HERE, {}) is not None:
                continue  # a sheet or frames DeepDream made: not a photo of the artist's
            name = os.path.basename(file_of(image) or image.get_name())
            photos.append((name, *composite(image, EXEMPLAR_SEND_SIDE)))
    return photos[:MAX_LISTED_FRAMES]


def composite(image, longest):
    """(RGB u8 pixels, width, height, 3) of what the image shows, at most `longest` pixels on
    its longer side; the image itself is not touched."""
    copy = image.duplicate()
    try:
        copy.undo_disable()
        layer = copy.flatten()
        width, height = copy.get_width(), copy.get_height()
        factor = min(1.0, longest / max(width, height))
        if factor < 1.0:
            copy.scale(max(1, round(width * factor)), max(1, round(height * factor)))
            layer = copy.get_layers()[0]
        width, height = layer.get_width(), layer.get_height()
        return bytes(read(layer, (0, 0, width, height), "R'G'B' u8")), width, height, 3
    finally:
        copy.delete()


ACCENTUATION_PARASITE = "deepdream-accentuation"
"""What an accentuated layer remembers of how it was made, saved with it in XCF files: as a
dream layer (`params`, `source`, `source-name`, `selection`), and whether its mask shows where
the photo changed (`change-mask`)."""


def accentuate_on(procedure, run_mode, image, drawables, config):
    """Filters > Artistic > DeepDream Accentuate: the selection with one feature of the network
    turned up, still recognisably itself, as a new layer above: the selection is its alpha, and
    its mask is white where the photo changed. On an accentuated layer it accentuates that
    layer again, in place, from its source as it is now, the dialog opening with its settings.
    Nothing changes until the result is back."""
    layer = source_layer(image, drawables, "accentuate")
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    record = remembered(layer, ACCENTUATION_PARASITE, {"params": dict, "selection": list})
    source, again = layer, None
    if record is not None:
        origin = image.get_layer_by_tattoo(record.get("source") or 0)
        if origin is not None and origin != layer:
            source, again = origin, layer
        elif not on_it_itself(record, "accentuation", "accentuated layer", "accentuate",
                              interactive):  # fmt: skip
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    parameters = load_parameters("accentuate")
    if again is not None:
        selection = tuple(record["selection"])
        if list(selection[2:]) != [layer.get_width(), layer.get_height()]:
            raise DreamError(
                f"This accentuated layer was resized to {layer.get_width()}x"
                f"{layer.get_height()} after it accentuated {selection[2]}x{selection[3]} pixels "
                f"of {origin.get_name()}: accentuate that layer anew."
            )
        if interactive:  # the dialog opens with this accentuation's settings
            restore(config, parameters, record["params"])
            config.set_property("change-mask", bool(record.get("change-mask")))
    else:
        selection = selection_bounds(source, "accentuate")
    region = Region(source, *selection)
    photo = region.context[2:]  # a neuron is on its grid
    check = lambda: refusal(config, "accentuate", "visualize", photo)  # noqa: E731
    if interactive and not dream_dialog(procedure, config, ACCENTUATE_LAYOUT, check=check):
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    params = dream_params(config, parameters)
    change_mask = config.get_property("change-mask")
    context_pixels = read(source, region.context, "R'G'B' u8")
    context_width, context_height = region.context[2:]
    Gimp.progress_init("DeepDream: waiting for the dream server")
    with connect() as client:
        seconds = client.estimate("visualize", params, context_width, context_height)
        if not worth_the_wait(ACCENTUATE_LAYOUT.title, "the accentuation", seconds, interactive):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        label, accentuated, changed = client.accentuate(
            bytes(context_pixels), context_width, context_height, 3, params, change_mask,
            on_progress=shown_in_status_bar("DeepDream Accentuate"),
        )  # fmt: skip
    rgb = region.crop(accentuated, 3, 1)
    where = None if changed is None else region.crop(changed, 1, 1)
    if not source.is_valid() or not layer.is_valid():
        raise DreamError("The layer was deleted while it was being accentuated.")
    memory = {"params": params, "change-mask": change_mask, "source": source.get_tattoo(),
              "source-name": source.get_name(), "selection": list(region.selection)}  # fmt: skip
    name = label + DREAM_LAYER_SUFFIX
    if again is not None:
        had_change_mask = bool(record.get("change-mask"))
        return accentuated_again(procedure, image, again, rgb, where, had_change_mask, name,
                                 memory)  # fmt: skip
    x, y, width, height = region.selection
    inside = how_selected(image, source, region.selection) or bytes([255]) * (width * height)
    rgba = with_alpha(rgb, inside, alpha_from=1)  # the selection, as the new layer's alpha
    image.undo_group_start()
    layer = None
    try:
        layer = add_layer(image, source, region, rgba, "R'G'B'A u8", name)
        remember(layer, ACCENTUATION_PARASITE, memory)
        if where is not None:
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
            mask = layer.get_mask()
            buffer = mask.get_buffer()
            buffer.set(Gegl.Rectangle.new(0, 0, width, height), "Y u8", bytes(where))
            buffer.flush()
            mask.update(0, 0, width, height)
            layer.set_edit_mask(False)  # the layer is active, so that Ctrl+F accentuates again
        image.set_selected_layers([layer])
    except Exception:
        if layer is not None and layer.is_valid():
            image.remove_layer(layer)
        raise
    finally:
        image.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()
    return succeeded(procedure, Gimp.Layer, layer)


def accentuated_again(procedure, image, layer, rgb, where, had_change_mask, name, memory):
    """The accentuated `layer` with new pixels `rgb`, its alpha (the selection) kept, its mask
    white where it changed now (`where`; None: no such mask, though a mask the artist added
    stays), its name and memory new: one undo step."""
    width, height = layer.get_width(), layer.get_height()
    before = read(layer, (0, 0, width, height), "R'G'B'A u8")
    Gimp.progress_set_text("DeepDream: accentuating the layer again")
    image.undo_group_start()
    try:
        replace_pixels(image, layer, "R'G'B'A u8", with_alpha(rgb, before))
        mask = layer.get_mask()
        if where is not None:
            if mask is None:
                layer.add_mask(layer.create_mask(Gimp.AddMaskType.WHITE))
                mask = layer.get_mask()
            replace_pixels(image, mask, "Y u8", where)
        elif mask is not None and had_change_mask:
            layer.remove_mask(Gimp.MaskApplyMode.DISCARD)
        if layer.get_mask() is not None:
            layer.set_edit_mask(False)
        layer.set_name(name)
        remember(layer, ACCENTUATION_PARASITE, memory)
        image.set_selected_layers([layer])
    finally:
        image.undo_group_end()
    Gimp.progress_end()
    Gimp.displays_flush()
    return succeeded(procedure, Gimp.Layer, layer)


def described(procedure, menu_label, menu_path, blurb, help_text):
    """Where the procedure sits in GIMP's menus, and what it says of itself."""
    procedure.set_menu_label(menu_label)
    procedure.add_menu_path(menu_path)
    procedure.set_documentation(blurb, help_text, procedure.get_name())
    procedure.set_attribution("DeepDream for GIMP", "DeepDream for GIMP", "2026")


class DeepDream(Gimp.PlugIn):
    def do_query_procedures(self):
        # Help in the dialogs opens the README's words on them, which install.py puts here
        # (GIMP takes a help domain only while it asks for the procedures)
        self.set_help_domain(HELP_DOMAIN, Gio.File.new_for_path(os.path.join(HERE, "help")))
        return [PROCEDURE, VISUALIZE_PROCEDURE, ZOOM_PROCEDURE, FRAMES_PROCEDURE,
                CHANNELS_PROCEDURE, ACCENTUATE_PROCEDURE]  # fmt: skip

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        Gegl.init(None)
        if name == VISUALIZE_PROCEDURE:
            return self.create_visualize(name)
        if name == ZOOM_PROCEDURE:
            return self.create_zoom(name)
        if name == FRAMES_PROCEDURE:
            return self.create_frames(name)
        if name == CHANNELS_PROCEDURE:
            return self.create_channels(name)
        if name == ACCENTUATE_PROCEDURE:
            return self.create_accentuate(name)
        procedure = self.layer_procedure(name, run)
        described(
            procedure, "_DeepDream...", "<Image>/Filters/Artistic",
            "Dream on the selection with a neural network (DeepDream)",
            "Re-draws the selected part of the layer with what a layer of a pretrained network "
            "looks for, and adds it as a new layer above. Needs the DeepDream dream server "
            "(started automatically once install.py has set it up).",
        )  # fmt: skip
        selection_mode = (
            "selection-mode",
            "Selection becomes",
            "How the selection shapes the new layer",
            SELECTION_MODES,
            "mask",
        )
        add_arguments(procedure, load_parameters(), [selection_mode], DREAM_LAYOUT,
                      reserved=BUTTON_MNEMONICS | {"p"})  # and _Preview  # fmt: skip
        procedure.add_layer_return_value("layer", "Layer", "The new dreamed layer", False, FLAGS)
        return procedure

    def layer_procedure(self, name, run_function):
        """A procedure on the active layer of an RGB or gray image."""
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_function, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        return procedure

    def create_zoom(self, name):
        procedure = self.layer_procedure(name, run_zoom)
        described(
            procedure, "DeepDream _Zoom...", "<Image>/Filters/Animation",
            "Dream an endless zoom into the layer",
            "Each frame is dreamed on the last one, moved a little closer (and turned or drifted, "
            "if asked). Opens a new image with a layer per frame, ready for Filters > Animation "
            "> Playback and for export as an animated GIF or WebP.",
        )  # fmt: skip
        parameters = load_parameters("zoom") + load_parameters()
        add_arguments(procedure, parameters, layout=ZOOM_LAYOUT)
        procedure.add_image_return_value("image", "Image", "The new image of frames", False, FLAGS)
        return procedure

    def create_frames(self, name):
        procedure = self.layer_procedure(name, run_frames)
        described(
            procedure, "DeepDream _Frames...", "<Image>/Filters/Animation",
            "Dream every frame of an animation, steadily",
            "Dreams the image's layers, the frames of an animation (an opened GIF or WebP), from "
            "the bottom one up: each frame starts from its source with the last one's dream "
            "carried along the motion, so that the dream moves with the picture instead of "
            "flickering. Opens a new image with the dreamed frames, their names, delays and "
            "offsets kept, ready for Filters > Animation > Playback and for export.",
        )  # fmt: skip
        parameters = load_parameters("frames") + load_parameters()
        add_arguments(procedure, parameters, layout=FRAMES_LAYOUT)
        procedure.add_image_return_value("image", "Image", "The new image of frames", False, FLAGS)
        return procedure

    def create_channels(self, name):
        procedure = self.layer_procedure(name, run_channels)
        described(
            procedure, "DeepDream _Strongest Channels...", "<Image>/File/Create",
            "See which features of a network layer the selection excites most",
            "Finds the channels (features) of a layer of the network that the selected part of "
            "the layer excites most, and opens a new image with a labelled picture of what each "
            "looks for; each label (block7/42) dreams that feature when typed into DeepDream's "
            "Layers. Beside each, the patches of your photos (a folder, or the open images) that "
            "excite it most.",
        )  # fmt: skip
        parameters = (load_parameters("channels") + list(EXEMPLAR_SOURCES)
                      + load_parameters("sheet-look"))  # fmt: skip
        add_arguments(procedure, parameters, layout=CHANNELS_LAYOUT)
        procedure.add_image_return_value("image", "Image", "The new image", False, FLAGS)
        procedure.add_string_return_value(
            "channels", "Channels", "The channels, strongest first, with their share of the "
            "layer's activation: block7/34 4.7%, block7/50 2.9%, ...", "", FLAGS,
        )  # fmt: skip
        return procedure

    def create_accentuate(self, name):
        procedure = self.layer_procedure(name, run_accentuate)
        described(
            procedure, "DeepDream _Accentuate...", "<Image>/Filters/Artistic",
            "Turn up one feature of the network in the selection",
            "Raises one channel (feature) of a layer, or an ImageNet class, in the selected part "
            "of the layer while the result stays close to it, and adds it as a new layer above, "
            "its mask white where it changed. On an accentuated layer, accentuates it again, in "
            "place, from its source as it is now. DeepDream Strongest Channels names the "
            "features the selection excites most.",
        )  # fmt: skip
        add_arguments(procedure, load_parameters("accentuate") + [CHANGE_MASK],
                      layout=ACCENTUATE_LAYOUT)  # fmt: skip
        procedure.add_layer_return_value("layer", "Layer", "The new layer", False, FLAGS)
        return procedure

    def create_visualize(self, name):
        procedure = Gimp.Procedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_visualize, None)
        described(
            procedure, "DeepDream _Feature Visualization...", "<Image>/File/Create",
            "See what a unit of a neural network looks for",
            "Renders images from noise that excite a layer, a channel, a neuron or an ImageNet "
            "class, and opens them as a new image with one layer per sample.",
        )  # fmt: skip
        procedure.add_enum_argument(
            "run-mode", "Run mode", "The run mode", Gimp.RunMode, Gimp.RunMode.NONINTERACTIVE, FLAGS
        )
        layout = ("layout", "Stack or sheet", "How the samples are laid out", LAYOUTS, "layers")
        parameters = load_parameters("visualize") + list(EXEMPLAR_SOURCES)
        add_arguments(procedure, parameters, [layout], VISUALIZE_LAYOUT)
        procedure.add_image_return_value("image", "Image", "The new image", False, FLAGS)
        return procedure


Gimp.main(DeepDream.__gtype__, sys.argv)
