import torch

from ebft.losses import token_weighted_ce
from ebft.packing import pack_examples, target_mask

EOS, PAD = 99, 98


def test_examples_are_joined_by_one_eos_and_cut_into_fixed_chunks():
    examples = [([1, 2], [3]), ([4], [5, 6, 7]), ([], [8])]
    packed = pack_examples(examples, eos_id=EOS, pad_id=PAD, chunk_length=4)
    # stream: 1 2 3 EOS 4 5 6 7 EOS 8 → 10 tokens → 3 chunks of 4, 2 padding tokens at the end
    assert packed.input_ids.tolist() == [[1, 2, 3, EOS], [4, 5, 6, 7], [EOS, 8, PAD, PAD]]
    assert packed.valid.tolist() == [[True] * 4, [True] * 4, [True, True, False, False]]
    assert packed.answer.tolist() == [
        [False, False, True, False],
        [False, True, True, True],
        [False, True, False, False],
    ]
    assert packed.document.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1], [1, 2, -1, -1]]


def test_no_eos_before_first_or_after_last_example_and_no_padding_when_exact():
    packed = pack_examples([([1], [2]), ([3], [4])], eos_id=EOS, pad_id=PAD, chunk_length=5)
    assert packed.input_ids.tolist() == [[1, 2, EOS, 3, 4]]
    assert packed.valid.all()


def test_padding_is_never_a_target():
    packed = pack_examples([([1, 2], [3, 4, 5])], eos_id=EOS, pad_id=PAD, chunk_length=4)
    mask = target_mask(packed, "all")
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]
    vocab = 100
    logits = torch.randn(2, 4, vocab)
    loss = token_weighted_ce(logits, packed.input_ids, mask)
    # Changing what the model predicts at padded targets must not change the loss.
    perturbed = logits.clone()
    perturbed[1] += 100 * torch.randn(4, vocab)  # every target of chunk 1 is padding (its first token has no context)
    assert torch.equal(token_weighted_ce(perturbed, packed.input_ids, mask), loss)


def test_answer_only_mask_excludes_question_eos_and_padding():
    packed = pack_examples([([1, 2], [3]), ([4], [5])], eos_id=EOS, pad_id=PAD, chunk_length=8)
    assert target_mask(packed, "answer").tolist() == [[False, False, True, False, False, True, False, False]]


def test_unknown_loss_target_is_refused():
    packed = pack_examples([([1], [2])], eos_id=EOS, pad_id=PAD, chunk_length=2)
    try:
        target_mask(packed, "questions")
    except ValueError as e:
        assert "questions" in str(e) and "'all'" in str(e)
    else:
        raise AssertionError("an unknown loss_on must raise")


def test_pack_records_tokenises_question_and_answer_without_special_tokens(tiny_model_dir):
    from ebft.models import load_tokenizer
    from ebft.packing import pack_records

    tok = load_tokenizer(tiny_model_dir)
    recs = [{"question": "def f():", "answer": "\n    return 1"}, {"question": "", "answer": "x = 2"}]
    packed = pack_records(recs, tok, chunk_length=64)
    ids = packed.input_ids[packed.valid].tolist()
    q = tok("def f():", add_special_tokens=False)["input_ids"]
    a = tok("\n    return 1", add_special_tokens=False)["input_ids"]
    b = tok("x = 2", add_special_tokens=False)["input_ids"]
    assert ids == q + a + [tok.eos_token_id] + b
    assert tok.bos_token_id not in ids
