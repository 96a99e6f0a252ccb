"""Runs inside GIMP 3 (python-fu-eval): sets up images, calls plug-in-deepdream, dumps results.

Reads the scenario list from the JSON file named by DEEPDREAM_SCENARIOS and writes, per
scenario, a report and raw pixel dumps into its folder for the pytest side to check.
"""

import json
import os
import traceback

from gi.repository import Gegl, Gimp, Gio

Gegl.init(None)
NONINTERACTIVE = Gimp.RunMode.NONINTERACTIVE


def dump(drawable, x, y, width, height, babl_format, path):
    data = drawable.get_buffer().get(
        Gegl.Rectangle.new(x, y, width, height), 1.0, babl_format, Gegl.AbyssPolicy.NONE
    )
    with open(path, "wb") as out:
        out.write(data)


def describe(layer):
    return {
        "name": layer.get_name(),
        "offsets": list(layer.get_offsets()[1:]),
        "size": [layer.get_width(), layer.get_height()],
        "has_mask": layer.get_mask() is not None,
        "has_alpha": layer.has_alpha(),
        "gray": layer.is_gray(),
    }


def prepare(scenario):
    image = Gimp.file_load(NONINTERACTIVE, Gio.File.new_for_path(scenario["file"]))
    layer = image.get_layers()[0]
    if scenario.get("gray"):
        image.convert_grayscale()
    if scenario.get("indexed"):
        image.convert_indexed(
            Gimp.ConvertDitherType.NONE, Gimp.ConvertPaletteType.GENERATE, 16, False, False, ""
        )
    if scenario.get("precision") == "u16":
        image.convert_precision(Gimp.Precision.U16_NON_LINEAR)
    if scenario.get("alpha"):
        layer.add_alpha()
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 120, 80)
        layer.edit_clear()
        Gimp.Selection.none(image)
    if scenario.get("offsets"):
        dx, dy = scenario["offsets"]
        image.resize(image.get_width() + dx, image.get_height() + dy, 0, 0)
        layer.set_offsets(dx, dy)
    ellipse = scenario.get("ellipse")
    if ellipse:
        image.select_ellipse(Gimp.ChannelOps.REPLACE, *ellipse)
        if scenario.get("feather"):
            Gimp.Selection.feather(image, scenario["feather"])
    return image, layer


def run_on(image, drawables, procedure_name, params):
    """Run a procedure of the plug-in as a script does, on the drawables of the image."""
    procedure = Gimp.get_pdb().lookup_procedure(procedure_name)
    config = procedure.create_config()
    config.set_property("run-mode", NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", drawables)
    for name, value in params.items():
        config.set_property(name, value)
    return procedure.run(config)


def script_values(scenario):
    """The scenario's arguments as a script passes them: a folder as a file."""
    params = dict(scenario.get("params", {}))
    if "exemplars-folder" in params:
        params["exemplars-folder"] = Gio.File.new_for_path(params["exemplars-folder"])
    return params


def run_visualize(scenario):
    procedure = Gimp.get_pdb().lookup_procedure("plug-in-deepdream-visualize")
    config = procedure.create_config()
    config.set_property("run-mode", NONINTERACTIVE)
    for name, value in script_values(scenario).items():
        config.set_property(name, value)
    images_before = len(Gimp.get_images())
    result = procedure.run(config)
    status = result.index(0)
    report = {"status": status.value_nick, "images_before": images_before}
    if status == Gimp.PDBStatusType.SUCCESS:
        image = result.index(1)
        report["size"] = [image.get_width(), image.get_height()]
        report["title"] = image.get_name()
        report["layers"] = [describe(layer) for layer in image.get_layers()]
        for index, layer in enumerate(image.get_layers()):
            dump(
                layer,
                0,
                0,
                layer.get_width(),
                layer.get_height(),
                "R'G'B' u8",
                os.path.join(scenario["folder"], f"sample-{index}.raw"),
            )
        report["images_after"] = len(Gimp.get_images())
        image.delete()
    else:
        report["message"] = str(result.index(1))
    return report


def run_zoom(scenario):
    folder = scenario["folder"]
    image, layer = prepare(scenario)
    width, height = layer.get_width(), layer.get_height()
    dump(layer, 0, 0, width, height, "R'G'B' u8", os.path.join(folder, "source-before.raw"))
    layers_before = [describe(item) for item in image.get_layers()]
    images_before = len(Gimp.get_images())
    result = run_on(image, [layer], "plug-in-deepdream-zoom", scenario.get("params", {}))
    status = result.index(0)
    report = {
        "status": status.value_nick,
        "images_before": images_before,
        "images_after": len(Gimp.get_images()),
        "layers_before": layers_before,
        "layers_after": [describe(item) for item in image.get_layers()],
    }
    dump(layer, 0, 0, width, height, "R'G'B' u8", os.path.join(folder, "source-after.raw"))
    if status == Gimp.PDBStatusType.SUCCESS:
        movie = result.index(1)
        if scenario.get("go_on"):  # the zoom again, on its own image: it goes on
            again = run_on(movie, [movie.get_layers()[0]], "plug-in-deepdream-zoom",
                           scenario["go_on"])  # fmt: skip
            report["go_on"] = {"status": again.index(0).value_nick,
                               "same_image": again.index(1) == movie}  # fmt: skip
        report["size"] = [movie.get_width(), movie.get_height()]
        report["title"] = movie.get_name()
        files = (image.get_file(), image.get_imported_file(), image.get_exported_file())
        report["source_file"] = next((f.get_path() for f in files if f is not None), None)
        report["frames"] = [describe(item) for item in movie.get_layers()]  # top first
        for index, frame in enumerate(reversed(movie.get_layers())):  # the first frame first
            dump(frame, 0, 0, frame.get_width(), frame.get_height(), "R'G'B' u8",
                 os.path.join(folder, f"frame-{index}.raw"))  # fmt: skip
        movie.delete()
    else:
        report["message"] = str(result.index(1))
    image.delete()
    return report


def run_frames(scenario):
    """An animation opened as layers (bottom first), each named with its delay and moved a
    little, dreamed by DeepDream Frames."""
    folder = scenario["folder"]
    files = scenario["frames"]
    image = Gimp.file_load(NONINTERACTIVE, Gio.File.new_for_path(files[0]))
    image.resize(image.get_width() + 12, image.get_height() + 6, 0, 0)
    for path in files[1:]:
        layer = Gimp.file_load_layer(NONINTERACTIVE, image, Gio.File.new_for_path(path))
        image.insert_layer(layer, None, 0)
    for index, layer in enumerate(reversed(image.get_layers())):
        layer.set_name(f"Frame {index + 1} ({100 + 10 * index}ms)")
        layer.set_offsets(2 * index, 3)
        dump(layer, 0, 0, layer.get_width(), layer.get_height(), "R'G'B' u8",
             os.path.join(folder, f"source-{index}.raw"))  # fmt: skip
    layers_before = [describe(layer) for layer in image.get_layers()]
    images_before = len(Gimp.get_images())
    result = run_on(image, [image.get_layers()[0]], "plug-in-deepdream-frames",
                    scenario.get("params", {}))  # fmt: skip
    status = result.index(0)
    report = {"status": status.value_nick, "images_before": images_before,
              "images_after": len(Gimp.get_images()), "layers_before": layers_before,
              "layers_after": [describe(layer) for layer in image.get_layers()]}  # fmt: skip
    if status == Gimp.PDBStatusType.SUCCESS:
        movie = result.index(1)
        report["size"] = [movie.get_width(), movie.get_height()]
        report["title"] = movie.get_name()
        report["frames"] = [describe(layer) for layer in movie.get_layers()]  # top first
        for index, frame in enumerate(reversed(movie.get_layers())):
            dump(frame, 0, 0, frame.get_width(), frame.get_height(), "R'G'B' u8",
                 os.path.join(folder, f"frame-{index}.raw"))  # fmt: skip
        movie.delete()
    else:
        report["message"] = str(result.index(1))
    image.delete()
    return report


def run_channels(scenario):
    """DeepDream Strongest Channels on the photo (its selection), with a folder of photos and
    the open images as exemplars."""
    image, layer = prepare(scenario)
    params = script_values(scenario)
    source = (0, 0, layer.get_width(), layer.get_height(), "R'G'B'A u8")
    dump(layer, *source, os.path.join(scenario["folder"], "source-before.raw"))
    images_before = len(Gimp.get_images())
    result = run_on(image, [layer], "plug-in-deepdream-channels", params)
    status = result.index(0)
    if scenario.get("twice") and status == Gimp.PDBStatusType.SUCCESS:
        # again, with the first sheet open beside the photo
        first = result.index(1)
        dump(first.get_layers()[0], 0, 0, first.get_width(), first.get_height(), "R'G'B' u8",
             os.path.join(scenario["folder"], "first-sheet.raw"))  # fmt: skip
        result = run_on(image, [layer], "plug-in-deepdream-channels", params)
        status = result.index(0)
        first.delete()
    report = {"status": status.value_nick, "images_before": images_before,
              "images_after": len(Gimp.get_images()),
              "layers_after": [describe(item) for item in image.get_layers()]}  # fmt: skip
    dump(layer, *source, os.path.join(scenario["folder"], "source-after.raw"))
    if status == Gimp.PDBStatusType.SUCCESS:
        sheet = result.index(1)
        report["channels"] = result.index(2)
        report["size"] = [sheet.get_width(), sheet.get_height()]
        report["title"] = sheet.get_name()
        report["layers"] = [describe(item) for item in sheet.get_layers()]
        dump(sheet.get_layers()[0], 0, 0, sheet.get_width(), sheet.get_height(), "R'G'B' u8",
             os.path.join(scenario["folder"], "sheet.raw"))  # fmt: skip
        sheet.delete()
    else:
        report["message"] = str(result.index(1))
    image.delete()
    return report


def run_accentuate(scenario):
    """DeepDream Accentuate on the photo's selection: the new layer and its mask."""
    folder = scenario["folder"]
    image, layer = prepare(scenario)
    width, height = layer.get_width(), layer.get_height()
    dump(layer, 0, 0, width, height, "R'G'B'A u8", os.path.join(folder, "source-before.raw"))
    result = run_on(image, [layer], "plug-in-deepdream-accentuate", scenario.get("params", {}))
    status = result.index(0)
    report = {"status": status.value_nick,
              "layers_after": [describe(item) for item in image.get_layers()]}  # fmt: skip
    dump(layer, 0, 0, width, height, "R'G'B'A u8", os.path.join(folder, "source-after.raw"))
    if status == Gimp.PDBStatusType.SUCCESS:
        new = result.index(1)
        report["returned"] = describe(new)
        size = (new.get_width(), new.get_height())
        dump(new, 0, 0, *size, "R'G'B'A u8", os.path.join(folder, "layer.raw"))
        if new.get_mask() is not None:
            dump(new.get_mask(), 0, 0, *size, "Y u8", os.path.join(folder, "mask.raw"))
        if scenario.get("redream"):
            report["redream"] = redream(image, layer, new, scenario, "accentuate")
    else:
        report["message"] = str(result.index(1))
    image.delete()
    return report


def run(scenario):
    if scenario.get("procedure") == "channels":
        return run_channels(scenario)
    if scenario.get("procedure") == "accentuate":
        return run_accentuate(scenario)
    if scenario.get("procedure") == "frames":
        return run_frames(scenario)
    if scenario.get("procedure") == "visualize":
        return run_visualize(scenario)
    if scenario.get("procedure") == "zoom":
        return run_zoom(scenario)
    folder = scenario["folder"]
    image, layer = prepare(scenario)
    babl = scenario.get("format", "R'G'B'A u8")
    width, height = layer.get_width(), layer.get_height()
    dump(layer, 0, 0, width, height, babl, os.path.join(folder, "source-before.raw"))
    layers_before = [describe(item) for item in image.get_layers()]
    result = run_on(image, [layer], "plug-in-deepdream", scenario.get("params", {}))
    status = result.index(0)
    report = {
        "status": status.value_nick,
        "layers_before": layers_before,
        "layers_after": [describe(item) for item in image.get_layers()],
        "source": describe(layer),
        "source_position": image.get_item_position(layer),
    }
    dump(layer, 0, 0, width, height, babl, os.path.join(folder, "source-after.raw"))
    if status == Gimp.PDBStatusType.SUCCESS:
        new = result.index(1)
        report["returned"] = describe(new)
        report["returned_position"] = image.get_item_position(new)
        new_width, new_height = new.get_width(), new.get_height()
        dump(new, 0, 0, new_width, new_height, babl, os.path.join(folder, "layer.raw"))
        if new.get_mask() is not None:
            dump(
                new.get_mask(),
                0,
                0,
                new_width,
                new_height,
                "Y u8",
                os.path.join(folder, "mask.raw"),
            )
        if not Gimp.Selection.is_empty(image):
            offset_x, offset_y = new.get_offsets()[1:]
            dump(
                image.get_selection(),
                offset_x,
                offset_y,
                new_width,
                new_height,
                "Y u8",
                os.path.join(folder, "selection.raw"),
            )
    else:
        report["message"] = str(result.index(1))
    if scenario.get("again"):
        report["again"] = dream_again(image, scenario)
    if scenario.get("redream") and status == Gimp.PDBStatusType.SUCCESS:
        report["redream"] = redream(image, layer, result.index(1), scenario)
    image.delete()
    return report


def redream(image, source, dream, scenario, procedure=None):
    """Retouch the source (optionally), keep the image in an XCF file and open it again
    (optionally), then run the plug-in (`plug-in-deepdream-PROCEDURE`) on the layer it made
    with new values; dump the layer."""
    again = scenario["redream"]
    folder = scenario["folder"]
    if again.get("retouch"):  # paint a white square on the photo
        image.select_rectangle(Gimp.ChannelOps.REPLACE, 150, 100, 60, 40)
        Gimp.context_set_foreground(Gegl.Color.new("white"))
        source.edit_fill(Gimp.FillType.FOREGROUND)
        Gimp.Selection.none(image)
    if again.get("remove_source"):
        image.remove_layer(source)
    if again.get("crop"):  # Layer > Crop to Content, say: the layer shrinks
        dream.resize(dream.get_width() - 20, dream.get_height() - 10, 0, 0)
    before = {"id": dream.get_id(), **describe(dream), "position": image.get_item_position(dream)}
    if again.get("via_xcf"):
        path = os.path.join(folder, "kept.xcf")
        Gimp.file_save(NONINTERACTIVE, image, Gio.File.new_for_path(path), None)
        image = Gimp.file_load(NONINTERACTIVE, Gio.File.new_for_path(path))
        dream = next(layer for layer in image.get_layers() if layer.get_name() == before["name"])
    name = "plug-in-deepdream" + ("" if procedure is None else f"-{procedure}")
    result = run_on(image, [dream], name, again["params"])
    report = {"status": result.index(0).value_nick, "before": before,
              "layers_after": [describe(item) for item in image.get_layers()]}  # fmt: skip
    if again.get("remove_source") or again.get("crop"):
        return {**report, "message": str(result.index(1))}
    if result.index(0) == Gimp.PDBStatusType.SUCCESS:
        redreamed = result.index(1)
        report["after"] = {"id": redreamed.get_id(), **describe(redreamed),
                           "position": image.get_item_position(redreamed)}  # fmt: skip
        width, height = redreamed.get_width(), redreamed.get_height()
        dump(redreamed, 0, 0, width, height, "R'G'B'A u8", os.path.join(folder, "redreamed.raw"))
        if redreamed.get_mask() is not None:
            dump(redreamed.get_mask(), 0, 0, width, height, "Y u8",
                 os.path.join(folder, "redreamed-mask.raw"))  # fmt: skip
    else:
        report["message"] = str(result.index(1))
    if again.get("via_xcf"):
        image.delete()
    return report


def dream_again(image, scenario):
    """What Filters > Repeat (Ctrl+F) does: the same procedure, on what is active now."""
    drawables = image.get_selected_drawables()
    result = run_on(image, drawables, "plug-in-deepdream", scenario.get("params", {}))
    again = {
        "active": [type(drawable).__name__ for drawable in drawables],
        "status": result.index(0).value_nick,
        "layers_after": [describe(item) for item in image.get_layers()],
    }
    if result.index(0) == Gimp.PDBStatusType.SUCCESS:
        again["returned_position"] = image.get_item_position(result.index(1))
    else:
        again["message"] = str(result.index(1))
    return again


with open(os.environ["DEEPDREAM_SCENARIOS"]) as listing:
    scenarios = json.load(listing)
for scenario in scenarios:
    try:
        outcome = run(scenario)
    except Exception:
        outcome = {"status": "script-error", "traceback": traceback.format_exc()}
    with open(os.path.join(scenario["folder"], "report.json"), "w") as out:
        json.dump(outcome, out, indent=1)
