"""Publishing through huggingface_hub's real HTTP client against the test Hub server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT
from hub_server import HubServer
from test_cli import compress_args, make_workspace

from wid_hf import cli

TOKEN = "hf_alice_write"
# exactly what a push of a job's student uploads (README, "What is written, deleted and uploaded")
STUDENT_UPLOAD = {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture
def hub():
    with HubServer(tokens={TOKEN: "alice"}, orgs={"alice": ["wid-org"]}) as server:
        yield server


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One tiny `wid-hf compress` job shared by the tests (they only read its student and report)."""
    ws = make_workspace(tmp_path_factory.mktemp("job"))
    assert cli.main(compress_args(ws)) == 0
    return ws["dir"] / "out"


def env_for(hub, home, token=TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=ROOT,
               HF_HUB_DISABLE_XET="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def wid_hf_cli(args, env):
    return subprocess.run([sys.executable, "-m", "wid_hf", *args], capture_output=True, text=True, env=env, timeout=300)


def python(script, env, cwd=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def test_push_student_round_trip(hub, job, tmp_path):
    student = job / "student"
    out = wid_hf_cli(["push", "--student", str(student), "--repo", "alice/wid-student"], env_for(hub, tmp_path / "h1"))
    assert out.returncode == 0, out.stderr
    assert "pushed to alice/wid-student" in out.stdout

    # a fresh HF_HOME, no token, a process that never imports wid_hf
    check = f"""
        import sys, torch
        from huggingface_hub import ModelCard
        from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM
        model = BertForMaskedLM.from_pretrained("alice/wid-student")
        AutoModelForMaskedLM.from_pretrained("alice/wid-student")
        tok = AutoTokenizer.from_pretrained("alice/wid-student")
        card = ModelCard.load("alice/wid-student")
        d = card.data
        local = BertForMaskedLM.from_pretrained({str(student)!r})
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), local.state_dict().values()))
        print(json.dumps({{"same": same, "base_model": d.base_model, "library": d.library_name,
                          "pipeline": d.pipeline_tag, "tags": d.tags,
                          "evals": [(e.metric_type, e.metric_value) for e in (d.eval_results or [])],
                          "text": card.text, "wid_hf": "wid_hf" in sys.modules, "vocab": len(tok)}}))
    """
    out = python("import json\n" + textwrap.dedent(check), env_for(hub, tmp_path / "h2", token=None))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    report = json.loads((job / "report.json").read_text())
    assert got["same"] and not got["wid_hf"] and got["vocab"] == 120
    assert got["library"] == "transformers" and got["pipeline"] == "fill-mask"
    assert {"wid", "distillation", "pruning", "bert"} <= set(got["tags"])
    assert got["base_model"] is None  # the teacher was a local folder: no Hub id to link
    assert ["accuracy", round(report["heldout"]["student"]["mlm_accuracy"], 4)] in got["evals"]
    for needle in ("Weight-Inherited Distillation", "with the MLM decoder", "without it", "compression ratio",
                   "optimizer steps", "15% of the tokens masked",
                   "AutoModelForMaskedLM.from_pretrained(\"alice/wid-student\")"):
        assert needle in got["text"], needle


def test_private_repo_branch_and_pull_request(hub, job, tmp_path):
    student = str(job / "student")
    env = env_for(hub, tmp_path / "h1")
    assert wid_hf_cli(["push", "--student", student, "--repo", "wid-org/private-student", "--private"], env).returncode == 0
    anonymous = python('from transformers import BertForMaskedLM; BertForMaskedLM.from_pretrained("wid-org/private-student")',
                       env_for(hub, tmp_path / "h2", token=None))
    assert anonymous.returncode != 0
    authorised = python('from transformers import BertForMaskedLM; BertForMaskedLM.from_pretrained("wid-org/private-student")',
                        env_for(hub, tmp_path / "h3"))
    assert authorised.returncode == 0, authorised.stderr[-2000:]

    out = wid_hf_cli(["push", "--student", student, "--repo", "alice/s", "--hub-revision", "dev"], env)
    assert out.returncode == 0, out.stderr
    repo = hub.repos["alice/s"]
    assert "config.json" in repo.commits[repo.refs["dev"]] and not repo.commits[repo.refs["main"]]

    out = wid_hf_cli(["push", "--student", student, "--repo", "alice/s", "--create-pr"], env)
    assert out.returncode == 0, out.stderr
    assert "pull request" in out.stdout and "refs/pr/1" in repo.refs
    assert not repo.commits[repo.refs["main"]]  # main untouched by the PR


@pytest.mark.parametrize("case", ["bad token", "unknown namespace", "server down"])
def test_failed_push_keeps_the_student_and_says_what_to_do(hub, job, tmp_path, case):
    student = job / "student"
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    env = env_for(hub, tmp_path / "h", token="hf_wrong" if case == "bad token" else TOKEN)
    repo = "bob/student" if case == "unknown namespace" else "alice/student"
    if case == "server down":
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: nothing listens
    out = wid_hf_cli(["push", "--student", str(student), "--repo", repo], env)
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("wid-hf")]
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    expected = {"bad token": "rejected the token", "unknown namespace": "No write access to bob/student",
                "server down": "Could not reach the Hub"}[case]
    assert expected in lines[0] and f"saved in {student}" in lines[0]
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before  # not even a model card written into it


def server_files(hub, repo, ref="main"):
    return set(hub.repos[repo].commits[hub.repos[repo].refs[ref]])


def test_push_uploads_only_the_listed_files_and_replaces_stale_weights(hub, job, tmp_path):
    import shutil

    student = tmp_path / "student"
    shutil.copytree(job / "student", student)
    extras = {"notes.txt": b"private notes", ".env": b"HF_TOKEN=hf_secretsecret", "training_args.bin": b"pickle",
              "optimizer.pt": b"state", "pytorch_model.bin": b"old weights", "README.md": b"my own readme"}
    for name, data in extras.items():
        (student / name).write_bytes(data)
    (student / "runs").mkdir()
    (student / "runs" / "events.out").write_bytes(b"tb")
    before = {p.name: p.read_bytes() for p in student.iterdir() if p.is_file()}
    env = env_for(hub, tmp_path / "h")
    # an earlier push left weights this one does not write (a shard, a .bin) and a file the user added on the Hub
    seed = python("""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("alice/stale")
        for name in ("model-00001-of-00002.safetensors", "pytorch_model.bin", "notes-on-the-hub.md"):
            api.upload_file(path_or_fileobj=b"old", path_in_repo=name, repo_id="alice/stale")
    """, env)
    assert seed.returncode == 0, seed.stderr[-2000:]
    out = wid_hf_cli(["push", "--student", str(student), "--repo", "alice/stale"], env)
    assert out.returncode == 0, out.stderr
    assert server_files(hub, "alice/stale") == STUDENT_UPLOAD | {"notes-on-the-hub.md"}
    card = hub.repos["alice/stale"].commits[hub.repos["alice/stale"].refs["main"]]["README.md"]
    assert card.startswith(b"---\n")  # the generated model card, not the folder's own README.md
    assert {p.name: p.read_bytes() for p in student.iterdir() if p.is_file()} == before  # the folder as it was


def test_private_on_an_existing_public_repo_is_refused(hub, job, tmp_path):
    env = env_for(hub, tmp_path / "h")
    student = str(job / "student")
    assert wid_hf_cli(["push", "--student", student, "--repo", "alice/public"], env).returncode == 0
    commits = dict(hub.repos["alice/public"].commits)
    out = wid_hf_cli(["push", "--student", student, "--repo", "alice/public", "--private"], env)
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("wid-hf")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "--private" in lines[0] and "public" in lines[0]
    assert hub.repos["alice/public"].commits == commits and not hub.repos["alice/public"].private


def test_wid_state_push_and_resume_elsewhere(hub, tmp_path):
    script = f"""
        import torch, sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from conftest import tiny_teacher, perturb_compactors, random_batch
        from wid_hf import WIDConfig, WIDModel, get_wid_model
        model = get_wid_model(tiny_teacher(), WIDConfig(target_ratio=0.5, mask_interval=2, pruning_intervals=2))
        perturb_compactors(model)
        model.update_masks(2)
        model.push_to_hub("alice/wid-state", local_dir={str(tmp_path / 'state')!r})
        model.push_to_hub("alice/wid-state-2")  # no local_dir: nothing written outside a temporary folder
        again = WIDModel.from_pretrained(tiny_teacher(), "alice/wid-state")
        b = random_batch()
        with torch.no_grad():
            print(torch.equal(model.eval()(**b).logits, again.eval()(**b).logits), again.kept_sizes()["hidden"])
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = python(script, env_for(hub, tmp_path / "h"), cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "24"]
    assert list(cwd.iterdir()) == []
    state = {"wid_config.json", "wid_model.safetensors"}
    assert server_files(hub, "alice/wid-state") == server_files(hub, "alice/wid-state-2") == state


def test_push_of_a_model_object_writes_nothing_locally(hub, tmp_path):
    script = f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from conftest import tiny_teacher, tiny_tokenizer
        from wid_hf.hub import push_student
        tokenizer = tiny_tokenizer({str(tmp_path / 'tok')!r})
        push_student(tiny_teacher(), "alice/object", tokenizer=tokenizer)
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = python(script, env_for(hub, tmp_path / "h"), cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(cwd.iterdir()) == []
    assert server_files(hub, "alice/object") == STUDENT_UPLOAD


def test_compress_push_to_hub(hub, tmp_path):
    ws = make_workspace(tmp_path)
    args = compress_args(ws) + ["--push-to-hub", "alice/from-compress"]
    out = wid_hf_cli(args, env_for(hub, tmp_path / "h"))
    assert out.returncode == 0, out.stderr[-3000:]
    files = hub.repos["alice/from-compress"].commits[hub.repos["alice/from-compress"].refs["main"]]
    assert set(files) == STUDENT_UPLOAD
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "pipeline_tag: fill-mask" in card and "model-index" in card


def test_model_card_of_a_baseline_student_says_how_it_was_made():
    from transformers import BertConfig

    from wid_hf.hub import build_model_card

    report = {"method": "etd-impt", "student": {"objective": "attention_kl"},
              "training": {"steps": 120, "batch_size": 8, "seq_len": 128, "corpus": "offline-wiki",
                           "learning_rate": 5e-4, "mlm_probability": 0.3}}
    card = str(build_model_card(BertConfig(hidden_size=192, intermediate_size=768), "me/etd", report=report))
    assert "`etd-impt` baseline" in card and "`attention_kl` KD objective" in card and "compactors" not in card
    assert "against the teacher; 30% of the tokens masked" in card  # budget mode's rate, not BERT's 15%
    del report["training"]["mlm_probability"]  # a report from before the rate was recorded says nothing of it
    assert "of the tokens masked" not in str(build_model_card(BertConfig(), "me/etd", report=report))


def test_a_tokenizer_given_to_a_folder_push_never_writes_into_the_folder(hub, job, tmp_path):
    import shutil

    student = tmp_path / "student"
    shutil.copytree(job / "student", student)
    before = {p.name: p.read_bytes() for p in student.iterdir()}
    script = f"""
        from transformers import AutoTokenizer
        from wid_hf.hub import push_student
        tokenizer = AutoTokenizer.from_pretrained({str(student)!r})
        tokenizer.add_tokens(["a-new-token"])  # differs from the folder's tokenizer files
        push_student({str(student)!r}, "alice/with-tokenizer", tokenizer=tokenizer)
    """
    out = python(script, env_for(hub, tmp_path / "h"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in student.iterdir()} == before  # hard-linked files were not written through
    uploaded = hub.repos["alice/with-tokenizer"].commits[hub.repos["alice/with-tokenizer"].refs["main"]]
    assert b"a-new-token" in uploaded["tokenizer.json"]
