"""The exported query tower, loaded in a fresh process, is the trained one."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_FRESH_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    path, ids_file, out_file = sys.argv[1:]
    signature = tf.saved_model.load(path).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["user_id"]
    ids = json.load(open(ids_file))
    outputs = {
        str(n): signature(user_id=tf.constant(ids[:n]))["embedding"].numpy()
        for n in (1, 2, 64)
    }
    np.savez(out_file, **outputs)
    print(json.dumps({
        "dtype": spec.dtype.name,
        "shape": spec.shape.as_list(),
        "inputs": sorted(signature.structured_input_signature[1]),
        "outputs": sorted(signature.structured_outputs),
        "output_dtype": signature.structured_outputs["embedding"].dtype.name,
    }))
    """
)


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A model trained in this process and its exported query tower."""
    from tests.conftest import SMALL_CONFIG
    from trainer import export, movielens
    from trainer.config import TrainConfig
    from trainer.train import fit

    model, _ = fit(
        movielens.load(small_data), TrainConfig(**{**SMALL_CONFIG, "epochs": 1})
    )
    path = tmp_path_factory.mktemp("export") / "query"
    export.save_query_tower(model.query_tower, path)
    return model, path


@pytest.fixture(scope="module")
def fresh_process_result(trained, tmp_path_factory):
    _, path = trained
    work = tmp_path_factory.mktemp("fresh")
    # 64 ids: all 40 users, repeated, plus an unknown one.
    ids = [str(1 + i % 40) for i in range(63)] + ["no-such-user"]
    (work / "ids.json").write_text(json.dumps(ids))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH_PROCESS,
            str(path),
            str(work / "ids.json"),
            str(work / "out.npz"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return ids, json.loads(done.stdout.strip().splitlines()[-1]), np.load(
        work / "out.npz"
    )


def test_signature_takes_a_1d_string_tensor_and_returns_float_embeddings(
    fresh_process_result,
):
    _, signature, _ = fresh_process_result

    assert signature == {
        "dtype": "string",
        "shape": [None],
        "inputs": ["user_id"],
        "outputs": ["embedding"],
        "output_dtype": "float32",
    }


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_served_embeddings_equal_the_in_memory_tower(
    fresh_process_result, trained, batch
):
    import tensorflow as tf

    ids, _, outputs = fresh_process_result
    model, _ = trained

    in_memory = model.query_tower(tf.constant(ids[:batch])).numpy()

    assert outputs[str(batch)].shape == in_memory.shape == (batch, 8)
    np.testing.assert_allclose(outputs[str(batch)], in_memory, atol=1e-5)


def test_the_query_saved_model_holds_no_scann_ops(small_published):
    from tensorflow.core.protobuf import saved_model_pb2

    _, published = small_published
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(
        (published.paths.query / "saved_model.pb").read_bytes()
    )
    ops = {n.op for n in saved.meta_graphs[0].graph_def.node}
    for function in saved.meta_graphs[0].graph_def.library.function:
        ops |= {n.op for n in function.node_def}

    assert ops
    assert not [op for op in ops if "scann" in op.lower()]
