"""The help centre Snapdesk answers from: articles read into sections (articles.py), cut into
passages and searched with SQLite FTS5 (index.py, terms.py), so answers can cite the operator's
own pages instead of the model's memory."""
