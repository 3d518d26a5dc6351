"""Judge prompt templates.

- ``render``: one template: validated at load, rendered safely, identified by the sha256 of its text;
- ``static``: the configured templates, loaded once (the fallback when nothing watches the files);
- ``watched``: the versioned, watched set a running run reads (edits take effect at the next request);
- ``editing``: editing safely: validation with a location, a preview, atomic saves.
"""
