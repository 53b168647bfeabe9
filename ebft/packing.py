"""Packing for CE-style training (docs/method.md §3).

Each example is tokenised as question‖answer: no chat template, no BOS, no separator between question and answer
(the two parts are tokenised separately, so the answer boundary is exact). Examples are joined by one EOS into one
stream, which is cut into chunks of exactly L tokens; the last chunk is padded, and padding is never a training
target. Alongside the token ids we keep, per position, whether it is a real token, whether it belongs to an answer,
and which example (document) it came from, for answer-only losses and document masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedChunks:
    input_ids: torch.Tensor  # (N, L) long
    valid: torch.Tensor  # (N, L) bool: a real token, not padding
    answer: torch.Tensor  # (N, L) bool: a token of an example's answer (not its question, not an EOS)
    document: torch.Tensor  # (N, L) long: index of the example a token belongs to (EOS: the one it ends); -1 on padding

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, index) -> PackedChunks:
        return PackedChunks(self.input_ids[index], self.valid[index], self.answer[index], self.document[index])


def tokenize_examples(records: list[dict], tokenizer) -> list[tuple[list[int], list[int]]]:
    """(question ids, answer ids) per record, without special tokens."""
    out = []
    for r in records:
        q = tokenizer(r["question"], add_special_tokens=False)["input_ids"] if r["question"] else []
        a = tokenizer(r["answer"], add_special_tokens=False)["input_ids"]
        out.append((q, a))
    return out


def pack_examples(
    examples: list[tuple[list[int], list[int]]], *, eos_id: int, pad_id: int, chunk_length: int
) -> PackedChunks:
    """Join ``examples`` with one EOS between consecutive ones and cut the stream into chunks of ``chunk_length``."""
    if chunk_length < 2:
        raise ValueError(f"chunk_length is {chunk_length}; it must be at least 2")
    ids, answer, doc = [], [], []
    for i, (q, a) in enumerate(examples):
        if i:
            ids.append(eos_id)
            answer.append(False)
            doc.append(i - 1)
        ids += list(q) + list(a)
        answer += [False] * len(q) + [True] * len(a)
        doc += [i] * (len(q) + len(a))
    if not ids:
        raise ValueError("nothing to pack: every example is empty")
    n_chunks = -(-len(ids) // chunk_length)
    pad = n_chunks * chunk_length - len(ids)
    valid = [True] * len(ids) + [False] * pad
    ids += [pad_id] * pad
    answer += [False] * pad
    doc += [-1] * pad
    shape = (n_chunks, chunk_length)
    return PackedChunks(
        input_ids=torch.tensor(ids, dtype=torch.long).view(shape),
        valid=torch.tensor(valid, dtype=torch.bool).view(shape),
        answer=torch.tensor(answer, dtype=torch.bool).view(shape),
        document=torch.tensor(doc, dtype=torch.long).view(shape),
    )


def pack_records(records: list[dict], tokenizer, chunk_length: int) -> PackedChunks:
    return pack_examples(
        tokenize_examples(records, tokenizer),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        chunk_length=chunk_length,
    )


def target_mask(chunks: PackedChunks, loss_on: str) -> torch.Tensor:
    """Which positions count as CE targets: 'all' real tokens (docs/method.md §6) or 'answer' tokens only; (N, L)
    bool."""
    if loss_on == "all":
        return chunks.valid
    if loss_on == "answer":
        return chunks.valid & chunks.answer
    raise ValueError(f"unknown loss_on {loss_on!r}; choose 'all' or 'answer'")
