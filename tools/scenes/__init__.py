"""Procedural visual questions about coloured shapes (aircache.cpp's demo task).

- `scene`: scene generation from a seed, rendering (RGB + object-id map), dense per-patch labels.
- `questions`: the five question types, answers with a lead-in before the key word, answer checks.
- `protocols`: question-aware and follow-up conversation texts and their token ids.
- `dataset`: training samples, the fixed held-out test set (own seeds) and examples.
"""

from .dataset import (EXAMPLE_SEED_BASE, TEST_SEED_BASE, VAL_SEED_BASE, TRAIN_SEED_LIMIT, is_training_seed, load_set,
                      random_questions, heldout_scenes, training_sample, training_seeds)
from .protocols import (FOLLOWUP_FIRST_TURN, FOLLOWUP_REPLY, PROTOCOLS, Encoder, continuation_text, conversation,
                        corpus_lines, prompt_text, runtime_prompt)
from .questions import KEY_WORDS, QTYPES, Question, check_answer, make_question
from .scene import (CELL_NAMES, COLOUR_NAMES, COLOURS, IMAGE_SIZE, SHAPES, Obj, Scene, SceneConfig, make_scene,
                    patch_labels, render)
