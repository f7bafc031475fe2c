"""The web UI: `lorakit webui` serves Gradio pages that build the same configs and start the same CLI jobs.

app.py builds the page; train_form.py turns the Train tab's form into a TrainConfig; safety.py confines paths and
uploads; i18n.py holds every string in English and Chinese. Imported only by `lorakit webui` (Gradio is optional).
"""
