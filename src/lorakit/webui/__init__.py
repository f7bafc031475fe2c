"""The web UI: `lorakit webui` serves Gradio pages that build the same configs and start the same CLI jobs.

app.py builds the page from the tabs (`<name>_tab.py`); train_form.py turns the Train tab's form into a TrainConfig;
chat_session.py holds the Chat tab's models and streams; export_form.py the Export tab's requests and what they left;
safety.py confines paths and uploads; i18n.py holds every string in English and Chinese. Imported only by
`lorakit webui` (Gradio is optional).
"""
