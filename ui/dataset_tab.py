"""The Dataset tab: upload images into a new (or existing) Kohya-layout dataset in the workspace, then look
at it — thumbnails, counts, sizes, tag frequency — edit captions, and caption it with basic, BLIP or WD14 as a
caption job (ui/caption_panel.py)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from trainer.jobs import JobManager

from .caption_panel import build_caption_panel
from .datasets import (DatasetInputError, import_uploads, list_datasets, save_captions, summarize, tag_frequency,
                       view_dataset)
from .workspace import Workspace

CAPTION_HEADERS = ["image", "size", "caption (.txt)", "folder caption"]
TAG_HEADERS = ["tag", "images"]


def build_dataset_tab(workspace: Workspace, manager: JobManager | None = None) -> gr.Dropdown:
    """Returns the dataset chooser (the app refreshes it when the tab is opened). Caption jobs go to `manager`
    (the app's, so one manager knows every worker it started); without one, a manager on the workspace's jobs
    folder, which sees and runs the same queue."""
    manager = manager if manager is not None else JobManager(workspace.jobs_dir)
    gr.Markdown("Drop images (and optional `.txt` captions named like them) to make a dataset. Kiln builds the "
                "Kohya folder for you: `<repeats>_<instance token> <class>/`.")
    with gr.Row():
        name = gr.Textbox(label="Dataset name", placeholder="my-dog", elem_id="dataset-name")
        token = gr.Textbox(label="Instance token", placeholder="sks", info="A rare word that will mean your subject.")
        class_word = gr.Textbox(label="Class", placeholder="dog", info="What the subject is, in general.")
        repeats = gr.Number(label="Repeats", value=10, precision=0, minimum=1, maximum=1000,
                            info="How often each image is seen per epoch.")
    uploads = gr.File(label="Images", file_count="multiple", elem_id="dataset-upload")
    folder_upload = gr.File(label="…or a whole folder", file_count="directory")
    add_button = gr.Button("Add to dataset", variant="primary")
    import_message = gr.Markdown()

    with gr.Row():
        dataset = gr.Dropdown(label="Dataset", choices=dataset_names(workspace), allow_custom_value=True, scale=4,
                              elem_id="dataset-choice")
        refresh_button = gr.Button("Refresh", scale=1)
    summary = gr.Markdown()
    gallery = gr.Gallery(label="Images", columns=6, height=360, elem_id="dataset-gallery")
    with gr.Row():
        captions = gr.Dataframe(headers=CAPTION_HEADERS, label="Captions (edit the .txt column, then Save)",
                                interactive=True, scale=3)
        tags = gr.Dataframe(headers=TAG_HEADERS, label="Tag frequency", interactive=False, scale=1)
    save_button = gr.Button("Save captions")
    caption_message = gr.Markdown()

    def dataset_path(choice: str | None) -> Path | None:
        if not choice:
            return None
        path = (workspace.datasets_dir / choice).resolve()
        return path if path.parent == workspace.datasets_dir.resolve() and path.is_dir() else None

    def show(choice: str | None):
        folder = dataset_path(choice)
        if folder is None:
            return "Choose a dataset.", [], [], []
        view = view_dataset(folder)
        images = view.images
        return (summarize(view), [(str(i.path), i.training_caption) for i in images],
                [[i.relative, f"{i.width}x{i.height}", i.caption, i.folder_caption] for i in images],
                [list(row) for row in tag_frequency(images)])

    def add(dataset_name: str, token_text: str, class_text: str, repeat_count, files, folder_files):
        paths = [str(p) for p in (files or []) + (folder_files or [])]
        try:
            repeat_count = int(repeat_count) if repeat_count is not None else None
            result = import_uploads(workspace.datasets_dir, dataset_name or "", token_text or "", class_text or "",
                                    repeat_count, paths)
        except DatasetInputError as exc:
            return (f"❌ {exc}", gr.skip(), *[gr.skip()] * 4)
        lines = [f"Added {len(result.added)} image(s) to `{result.folder}`."]
        lines += [f"- ❌ refused {line}" for line in result.refused]
        choice = result.folder.parent.name
        return ("\n".join(lines), gr.Dropdown(choices=dataset_names(workspace), value=choice), *show(choice))

    def save(choice: str | None, table):
        folder = dataset_path(choice)
        if folder is None:
            return "Choose a dataset first.", *[gr.skip()] * 4
        rows = table.values.tolist() if hasattr(table, "values") else table or []
        try:
            changed = save_captions(folder, [(str(row[0]), str(row[2] or "")) for row in rows if row and row[0]])
        except DatasetInputError as exc:
            return f"❌ {exc}", *[gr.skip()] * 4
        return f"Saved {len(changed)} caption(s).", *show(choice)

    views = [summary, gallery, captions, tags]
    add_button.click(add, [name, token, class_word, repeats, uploads, folder_upload],
                     [import_message, dataset, *views], api_name="dataset_add")
    dataset.change(show, dataset, views, api_name="dataset_show")
    refresh_button.click(show, dataset, views, api_name="dataset_refresh")
    save_button.click(save, [dataset, captions], [caption_message, *views], api_name="dataset_save_captions")
    build_caption_panel(manager, dataset, dataset_path, show, views)
    return dataset


def dataset_names(workspace: Workspace) -> list[str]:
    return [p.name for p in list_datasets(workspace.datasets_dir)]
