"""A1111's built-in selectable scripts, run through `script_name` / `script_args`.

- prompts_from_file: "prompts from file or textbox" (txt2img, img2img)
- sd_upscale: "sd upscale" (img2img)
- xyz_plot (+ xyz_axes, grid_draw): "x/y/z plot" (txt2img, img2img)
- runner: plans a script off the event loop and runs it as one scheduler work item

Each script module offers TITLE, arg_specs(ctx) and plan(request, ctx) -> ScriptRun.
"""
