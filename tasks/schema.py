"""The data contract's two tables (DESIGN.md, "Data contracts"): every loader produces them and
validation checks them.

documents: doc_id, title, text, source, updated_at
qa:        qa_id, question, answer (list of accepted answers), doc_id, split
"""

REQUIRED_DOC_COLUMNS = ("doc_id", "title", "text")
OPTIONAL_DOC_COLUMNS = ("source", "updated_at")
DOC_COLUMNS = REQUIRED_DOC_COLUMNS + OPTIONAL_DOC_COLUMNS
QA_COLUMNS = ("qa_id", "question", "answer", "doc_id", "split")
SPLITS = ("train", "validation", "test")
