"""minift.core.checkpoints: the recorder that writes a run's files changes no number of the run
(the loop alone writes nothing and trains the same weights)."""

from toy_loop import Toy, assert_same, config, epochs_of, mean_loss, params_of, train

import minift.core.loop as train_module


def test_the_loop_alone_writes_nothing_and_trains_as_with_its_files(tmp_path):
    """The textbook loop does no file I/O (out_dir is not even created), and the recorder that
    writes the files changes no number: the same weights (torch.equal) and the same records
    but for the timings."""
    cfg = config(tmp_path, "alone", epochs=2, eval_every=2, keep_resume=False)
    evaluate = lambda m: {"loss": mean_loss(m, epochs_of(2, seed=50)(0))}  # noqa: E731
    alone = Toy()
    quiet = train_module.train(alone, epochs_of(3), cfg, evaluate=evaluate)
    assert list(tmp_path.iterdir()) == []
    filed = Toy()
    loud = train(filed, epochs_of(3), config(tmp_path, "filed", epochs=2, eval_every=2),
                 evaluate=evaluate)
    assert_same(params_of(alone), params_of(filed))
    untimed = [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")}
               for r in quiet.history]
    assert untimed == [{k: v for k, v in r.items() if k not in ("time", "examples_per_s")}
                       for r in loud.history]
    assert (quiet.best_metric, quiet.best_step) == (loud.best_metric, loud.best_step)

