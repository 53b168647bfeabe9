"""Training and evaluation data in the forms TRL defines, turned into the records EBFT packs.

EBFT packs every example as question‖answer (docs/method.md §3): the question may be empty (raw text), and the two
parts are tokenised apart so that the answer's first token is exact. Accepted rows, given as a ``datasets.Dataset``
(or ``IterableDataset``), a list of dicts or a list of strings:

- a string, or ``{"text": ...}``: language modelling; the whole text is the answer, the question is empty;
- ``{"prompt": ..., "completion": ...}``: prompt-completion; the prompt is the question. Conversational
  prompt-completion (both lists of messages) is rendered with the tokenizer's chat template: the question is the
  prompt's rendering with the generation prompt, the answer what the completion adds to it;
- ``{"question": ..., "answer": ...}``: this project's records (the question may be empty or null);
- ``{"messages": [...]}``: conversational; rendered with the chat template, and where the last message is the
  assistant's, everything before its reply is the question and the reply (with the template's closing tokens) the
  answer.

Other columns are ignored. A row of any other shape is refused in one sentence naming the row, the column and the
accepted forms.
"""

from __future__ import annotations

from collections.abc import Mapping

from ebft.errors import UserError

FORMS = ("a string or 'text' (language modelling), 'prompt' and 'completion', 'question' and 'answer', or "
         "'messages' (conversational)")  # fmt: skip


def to_records(dataset, tokenizer=None, *, where: str = "train_dataset") -> list[dict]:
    """Records ``{"id", "question", "answer"}`` of every row of ``dataset``, in order (see the module's docstring)."""
    if dataset is None:
        raise UserError(f"{where} is None; pass a dataset of rows in one of the accepted forms: {FORMS}.")
    if _is_dataset_dict(dataset):
        splits = ", ".join(repr(k) for k in dataset)
        raise UserError(f"{where} is a DatasetDict of splits {splits}; pass one split, e.g. dataset['train'].")
    if isinstance(dataset, (str, bytes, Mapping)):
        raise UserError(f"{where} is a single {type(dataset).__name__}, not a dataset; pass a list of rows or a "
                        f"datasets.Dataset.")  # fmt: skip
    try:
        rows = iter(dataset)
    except TypeError:
        raise UserError(f"{where} is a {type(dataset).__name__}, which is not a dataset; pass a datasets.Dataset, a "
                        f"list of dicts or a list of strings.") from None  # fmt: skip
    records = [_record(row, i, tokenizer, where) for i, row in enumerate(rows)]
    if not records:
        raise UserError(f"{where} has no rows; give at least one example.")
    return records


def _is_dataset_dict(obj) -> bool:
    return type(obj).__name__ in ("DatasetDict", "IterableDatasetDict")


def _record(row, i: int, tokenizer, where: str) -> dict:
    at = f"{where} row {i}"
    if isinstance(row, str):
        return {"id": str(i), "question": "", "answer": _nonempty(row, at, "the row")}
    if not isinstance(row, Mapping):
        raise UserError(f"{at} is a {type(row).__name__}; give each row as {FORMS}.")
    rid = str(row.get("id", i)) if isinstance(row.get("id", i), (str, int)) else str(i)
    if "messages" in row:
        question, answer = _conversation(row["messages"], tokenizer, at)
    elif "prompt" in row or "completion" in row:
        _both(row, ("prompt", "completion"), at)
        if isinstance(row["prompt"], list) or isinstance(row["completion"], list):
            question, answer = _chat_prompt_completion(row["prompt"], row["completion"], tokenizer, at)
        else:
            question, answer = _text(row["prompt"], at, "prompt"), _text(row["completion"], at, "completion")
    elif "question" in row or "answer" in row:
        _both(row, ("question", "answer"), at, optional="question")
        question = "" if row["question"] is None else _text(row["question"], at, "question")
        answer = _text(row["answer"], at, "answer")
    elif "text" in row:
        question, answer = "", _text(row["text"], at, "text")
    else:
        columns = ", ".join(repr(str(k)) for k in row) or "none"
        raise UserError(f"{at} has the columns {columns} but none of the accepted forms; give {FORMS}.")
    if not question and not answer:
        raise UserError(f"{at} is empty; drop it or give it text.")
    return {"id": rid, "question": question, "answer": answer}


def _both(row: Mapping, columns: tuple[str, str], at: str, optional: str | None = None) -> None:
    missing = [c for c in columns if c not in row and c != optional]
    if missing:
        have = next(c for c in columns if c in row)
        raise UserError(f"{at} has {have!r} but no {missing[0]!r}; give both columns (or 'text' for plain text).")
    if optional is not None and optional not in row:
        raise UserError(f"{at} has {columns[1]!r} but no {optional!r}; give both columns (the question may be empty), "
                        f"or 'text' for plain text.")  # fmt: skip


def _text(value, at: str, column: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{at}, column {column!r} is a {type(value).__name__}, not text; give a string there.")
    return value


def _nonempty(value: str, at: str, what: str) -> str:
    if not value:
        raise UserError(f"{at} is an empty string; drop it or give it text.")
    return value


def _template(tokenizer, at: str):
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{at} is conversational, but the tokenizer has no chat template; pass a processing_class "
                        f"that has one, or give the rows as 'text'.")  # fmt: skip
    return tokenizer


def _messages(value, at: str, column: str) -> list[dict]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )  # fmt: skip
    if not ok:
        raise UserError(f"{at}, column {column!r} is not a list of messages; give "
                        f"[{{'role': ..., 'content': ...}}, ...].")  # fmt: skip
    return [dict(m) for m in value]


def _render(tokenizer, messages: list[dict], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _split_reply(tokenizer, before: list[dict], full: list[dict]) -> tuple[str, str]:
    """(question, answer): the rendering of ``before`` with the generation prompt, and what ``full`` adds to it; the
    whole rendering as the answer where the template does not render ``before`` as a prefix of ``full``."""
    whole = _render(tokenizer, full, generation_prompt=False)
    prompt = _render(tokenizer, before, generation_prompt=True)
    if whole.startswith(prompt) and len(whole) > len(prompt):
        return prompt, whole[len(prompt) :]
    return "", whole


def _conversation(value, tokenizer, at: str) -> tuple[str, str]:
    messages = _messages(value, at, "messages")
    tokenizer = _template(tokenizer, at)
    if messages[-1]["role"] == "assistant" and len(messages) > 1:
        return _split_reply(tokenizer, messages[:-1], messages)
    return "", _render(tokenizer, messages, generation_prompt=False)


def _chat_prompt_completion(prompt, completion, tokenizer, at: str) -> tuple[str, str]:
    prompt = _messages(prompt, at, "prompt")
    completion = _messages(completion, at, "completion")
    return _split_reply(_template(tokenizer, at), prompt, prompt + completion)
