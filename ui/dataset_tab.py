"""The Dataset tab: upload images into a new (or existing) Kohya-layout dataset in the workspace, then look
at it — thumbnails, counts, sizes, tag frequency — edit captions, and caption it with basic, BLIP or WD14 as a
caption job (ui/caption_panel.py)."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from trainer.jobs import JobManager

from .caption_panel import build_caption_panel
from .caption_review import build_caption_review, refreshed
from .datasets import (DatasetInputError, dataset_folder, import_uploads, kohya_folder, list_datasets,
                       save_captions, summarize, tag_frequency, view_dataset)
from .doctor_panel import build_doctor_panel
from .numbers import NumberInputError, read_number
from .workspace import Workspace

FOLDER_UPLOAD_ID = "dataset-folder-upload"
# Gradio forgets an uploaded folder's name, which for Kohya holds the repeats: the page records the browser's
# relative paths as the folder is chosen or dropped (FOLDER_PATHS_HEAD, in the page head) and sends them along.
FOLDER_PATHS_HEAD = """<script>
(() => {
  const inFolderUpload = (t) => t && t.closest && t.closest('#%s');
  document.addEventListener('change', (e) => {
    if (e.target && e.target.type === 'file' && inFolderUpload(e.target)) {
      window.kilnFolderPaths = Array.from(e.target.files || []).map((f) => f.webkitRelativePath || f.name);
    }
  }, true);
  document.addEventListener('drop', (e) => {
    if (!inFolderUpload(e.target) || !e.dataTransfer) { return; }
    window.kilnFolderPaths = Array.from(e.dataTransfer.items || [])
      .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
      .filter((entry) => entry && entry.isDirectory).map((entry) => entry.name + '/');
  }, true);
})();
</script>""" % FOLDER_UPLOAD_ID
READ_FOLDER_PATHS = "(files, paths) => [files, JSON.stringify(window.kilnFolderPaths || [])]"
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
        repeats = gr.Textbox(label="Repeats", value="10", max_lines=1, elem_id="dataset-repeats",
                             info="How often each image is seen per epoch (1 to 1000). A Kohya folder's "
                                  "\"N_\" prefix fills it in.")
    uploads = gr.File(label="Images", file_count="multiple", elem_id="dataset-upload")
    folder_upload = gr.File(label="…or a whole folder (a Kohya \"20_sks toy\" folder keeps its repeats)",
                            file_count="directory", elem_id=FOLDER_UPLOAD_ID)
    # The browser's relative paths of the folder's files (the server only ever sees bare file names).
    folder_paths = gr.Textbox(visible=False, elem_id="dataset-folder-paths")
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
        try:
            path = dataset_folder(workspace.datasets_dir, choice)
        except DatasetInputError:
            return None
        return path if path.is_dir() else None

    def show(choice: str | None):
        folder = dataset_path(choice)
        if folder is None:
            return "Choose a dataset.", [], [], []
        view = view_dataset(folder)
        images = view.images
        # The summary names its dataset: a switch then always changes it, which is what re-reads the review grid.
        return (f"**`{choice}`**: " + summarize(view), [(str(i.path), i.training_caption) for i in images],
                [[i.relative, f"{i.width}x{i.height}", i.caption, i.folder_caption] for i in images],
                [list(row) for row in tag_frequency(images)])

    def add(dataset_name: str, token_text: str, class_text: str, repeat_count, files, folder_files):
        paths = [str(p) for p in (files or []) + (folder_files or [])]
        try:
            repeat_count = read_number("Repeats", repeat_count, whole=True)
            result = import_uploads(workspace.datasets_dir, dataset_name or "", token_text or "", class_text or "",
                                    repeat_count, paths)
        except (DatasetInputError, NumberInputError) as exc:
            return (f"❌ {exc}", gr.skip(), *[gr.skip()] * 4)
        lines = [f"Added {len(result.added)} image(s) to `{result.folder}`."]
        if result.duplicates:
            lines.append(f"Skipped {len(result.duplicates)} image(s) already in the dataset (same content):")
            lines += [f"- = {line}" for line in result.duplicates]
        lines += [f"- ✎ renamed {line}" for line in result.renamed]
        lines += [f"- ❌ refused {line}" for line in result.refused]
        choice = result.folder.parent.name
        return ("\n".join(lines), gr.Dropdown(choices=dataset_names(workspace), value=choice), *show(choice))

    def save(choice: str | None, table):
        folder = dataset_path(choice)
        if folder is None:
            return "Choose a dataset first.", *[gr.skip()] * 4
        rows = table.values.tolist() if hasattr(table, "values") else table or []
        try:
            changed, problems = save_captions(folder, [(str(row[0]), str(row[2] or "")) for row in rows
                                                       if row and row[0]])
        except DatasetInputError as exc:
            return f"❌ {exc}", *[gr.skip()] * 4
        return "\n".join([f"Saved {len(changed)} caption(s)."] + [f"- ❌ {p}" for p in problems]), *show(choice)

    def unsaved_edits(choice: str | None, table) -> list[str]:
        """Images whose caption in the table differs from its file: edits not saved yet."""
        folder = dataset_path(choice)
        rows = table.values.tolist() if hasattr(table, "values") else (table or {}).get("data", table) or []
        if folder is None or not rows:
            return []
        on_disk = {i.relative: i.caption for i in view_dataset(folder).images}
        return [str(row[0]) for row in rows if row and str(row[0]) in on_disk
                and str(row[2] or "").strip() != on_disk[str(row[0])].strip()]

    def refresh(choice: str | None, table, last_asked):
        """Refresh the view; unsaved caption edits are never dropped without a word: the first press says so."""
        edited = unsaved_edits(choice, table)
        if edited and last_asked != [choice, edited]:
            return (*[gr.skip()] * 4, f"⚠ {len(edited)} caption edit(s) are not saved yet ({', '.join(edited[:3])}"
                    f"{'…' if len(edited) > 3 else ''}): press Save captions to keep them, or Refresh again to "
                    "discard them.", [choice, edited])
        return (*show(choice), "", None)

    def folder_chosen(files, paths_json: str):
        """Show what an uploaded folder's Kohya name says, in the fields above, where it can be changed."""
        try:
            paths = json.loads(paths_json or "[]")
        except json.JSONDecodeError:
            paths = []
        folder, others = kohya_folder([str(p) for p in paths] if isinstance(paths, list) else [])
        if folder is None:
            return gr.skip(), gr.skip(), gr.skip(), (
                "The folder has no Kohya `N_` name: the images get the repeats, token and class set above."
                if files else "")
        note = (f" It also holds {', '.join(f'`{o}`' for o in others)}: add those separately to keep their own "
                "repeats." if others else "")
        return (str(folder.repeats), folder.token, folder.class_word,
                f"`{folder.name}` is a Kohya folder: **{folder.repeats} repeats**, instance token "
                f"`{folder.token}`, class `{folder.class_word}` (filled in above; change them if you like).{note}")

    views = [summary, gallery, captions, tags]
    asked = gr.State(None)  # the unsaved edits the person was last told about
    add_button.click(add, [name, token, class_word, repeats, uploads, folder_upload],
                     [import_message, dataset, *views], api_name="dataset_add")
    dataset.change(show, dataset, views, api_name="dataset_show")
    folder_upload.upload(folder_chosen, [folder_upload, folder_paths], [repeats, token, class_word, import_message],
                         js=READ_FOLDER_PATHS, api_name="dataset_folder_chosen")
    refresh_button.click(refresh, [dataset, captions, asked], [*views, caption_message, asked],
                         api_name="dataset_refresh")
    save_button.click(save, [dataset, captions], [caption_message, *views], api_name="dataset_save_captions")
    panel = build_caption_panel(manager, dataset, dataset_path, show, views)
    review = build_caption_review(manager, dataset, dataset_path, panel)
    # Another dataset chosen, captions saved or made: the review grid reads them again (its only trigger).
    summary.change(refreshed, [review, dataset], review, api_visibility="private")
    build_doctor_panel(dataset, dataset_path)
    return dataset


def dataset_names(workspace: Workspace) -> list[str]:
    return [p.name for p in list_datasets(workspace.datasets_dir)]
