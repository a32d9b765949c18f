"""Built-in tasks: uncond, class2img, text2img, layout2img, semantic2img, superres, inpaint, img2img."""

from __future__ import annotations

from ldmkit import hookimpl

LDMKIT_API_VERSION = "1.0"


@hookimpl
def register_tasks(register) -> None:
    from ldmkit_tasks.img2img import Img2ImgTask
    from ldmkit_tasks.simple import Class2ImgTask, Text2ImgTask, UncondTask
    from ldmkit_tasks.spatial import InpaintTask, Layout2ImgTask, Semantic2ImgTask, SuperresTask

    for cls in (
        UncondTask,
        Class2ImgTask,
        Text2ImgTask,
        Layout2ImgTask,
        Semantic2ImgTask,
        SuperresTask,
        InpaintTask,
        Img2ImgTask,
    ):
        register(cls)
