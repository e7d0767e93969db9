"""Train and test RecBole 1.2.1's SASRec on the fetched MovieLens-100K, the peer of `evokernel recsys train`.

Run through scripts/peer-recbole, which makes the virtualenv this needs. Beside RecBole's own test metrics
(full ranking, no seen-item filtering for sequential models) it scores the best model again the way
`evokernel recsys eval` does: seen items filtered and not. It also compares RecBole's split with ours: the
counts must be equal, and it reports how many validation and test items differ from those that a
stable time sort of the file gives (our loader's rule). RecBole sorts min-max normalised timestamps held as
float32, about one-second steps on ML-100K, so interactions a second apart can tie there and keep file order.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="RecBole YAML (scripts/recbole-sasrec-ml100k.yaml)")
    parser.add_argument(
        "--data",
        help="folder holding ml-100k.inter (default: $EVOKERNEL_ASSETS/data/ml-100k, else ./assets/data/ml-100k)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", help="folder for RecBole's logs and checkpoint (default: a new temporary one)")
    parser.add_argument("--epochs", type=int, help="override the YAML's epochs")
    parser.add_argument("--stopping-step", type=int, help="override the YAML's stopping_step (patience)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="start no new epoch once this much training time has passed (the best epoch so far is tested)",
    )
    parser.add_argument(
        "--checkpoint", help="test this saved RecBole model (a .pth from --out's saved/) instead of training"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    return parser.parse_args()


def data_folder(arg):
    if arg:
        folder = Path(arg)
    else:
        folder = Path(os.environ.get("EVOKERNEL_ASSETS", "assets")) / "data" / "ml-100k"
    inter = folder / "ml-100k.inter"
    if not inter.is_file():
        sys.exit(f"recbole_sasrec: {inter} is missing; fetch it with scripts/fetch-assets (or pass --data)")
    return folder.resolve()


def file_split(inter_path):
    """Our loader's split of the atomic file: per user, items by a stable sort on timestamp (file order on
    ties); the last is the test item, the one before the validation item. Also counts the users whose last
    three timestamps hold a tie, where the tie rule decides the split."""
    rows = {}
    with open(inter_path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        cols = [h.split(":")[0] for h in header]
        u, i, t = cols.index("user_id"), cols.index("item_id"), cols.index("timestamp")
        for line in f:
            fields = line.rstrip("\n").split("\t")
            rows.setdefault(fields[u], []).append((float(fields[t]), fields[i]))
    split, tied = {}, 0
    for user, history in rows.items():
        history.sort(key=lambda r: r[0])  # stable
        if len(history) >= 3:
            split[user] = (history[-2][1], history[-1][1])
            last = [r[0] for r in history[-3:]]
            tied += len(set(last)) < 3
    n_items = len({item for h in rows.values() for _, item in h})
    return split, len(rows), n_items, sum(len(h) for h in rows.values()), tied


class BudgetSpent(Exception):
    """Raised instead of starting an epoch once the training time budget is spent."""


def budgeted_trainer(trainer_class, max_seconds):
    """RecBole's trainer, stopping before an epoch once `max_seconds` of training have passed (RecBole has
    only an epoch count). Fit saves each new best epoch at once, so nothing is lost by stopping between epochs."""

    class Budgeted(trainer_class):
        def _train_epoch(self, *args, **kwargs):
            if not hasattr(self, "budget_start"):
                self.budget_start = time.time()
            elif max_seconds is not None and time.time() - self.budget_start >= max_seconds:
                raise BudgetSpent()
            return super()._train_epoch(*args, **kwargs)

    return Budgeted


def user_histories(dataset):
    """Each user's items in RecBole's time order, rebuilt from its augmented rows (one per prefix and next
    item, sorted by user and time): a user's first row holds the first item as its one-item prefix, and every
    row's target is the next item."""
    uid, iid = dataset.uid_field, dataset.iid_field
    rows = dataset.inter_feat
    prefixes = rows[iid + dataset.config["LIST_SUFFIX"]]
    lengths = rows[dataset.item_list_length_field].tolist()
    histories = {}
    for row, (u, target) in enumerate(zip(rows[uid].tolist(), rows[iid].tolist())):
        if u not in histories:
            if lengths[row] != 1:
                sys.exit(f"recbole_sasrec: user {u}'s first augmented row has a {lengths[row]}-item prefix, not 1")
            histories[u] = [int(prefixes[row][0])]
        histories[u].append(target)
    return histories


def ranked_metrics(scores, targets, histories):
    """HR@10, NDCG@10, HR@20, NDCG@20 of `targets` in `scores` (`[users, items]`, item 0 is padding), seen
    items filtered and not (the target never). As in `evokernel recsys eval`, an item with a score equal to
    the target's ranks above it if its id is lower (here RecBole's internal ids), and a NaN target ranks last."""
    import torch

    out = {}
    target_ids = torch.tensor(targets).unsqueeze(1)
    lower_id = torch.arange(scores.shape[1]).unsqueeze(0) < target_ids
    for filtered in (True, False):
        s = scores.clone()
        s[:, 0] = -math.inf
        if filtered:
            for row, seen in enumerate(histories):
                seen = [item for item in seen if item != targets[row]]
                s[row, seen] = -math.inf
        target_scores = s.gather(1, target_ids)
        ahead = (s > target_scores) | ((s == target_scores) & lower_id)
        ranks = ahead.sum(1).masked_fill(target_scores.squeeze(1).isnan(), s.shape[1]).tolist()
        tag = "filtered" if filtered else "unfiltered"
        for k in (10, 20):
            hits = [r < k for r in ranks]
            out[f"hit@{k} {tag}"] = sum(hits) / len(ranks)
            out[f"ndcg@{k} {tag}"] = sum(1 / math.log2(r + 2) for r, h in zip(ranks, hits) if h) / len(ranks)
    return out


def main():
    args = parse_args()
    data = data_folder(args.data)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="recbole-sasrec-"))
    out.mkdir(parents=True, exist_ok=True)
    config_path = Path(args.config).resolve()
    # RecBole writes its log and TensorBoard folders into the working directory.
    os.chdir(out)

    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    overrides = {"data_path": str(data.parent), "checkpoint_dir": str(out / "saved")}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.stopping_step is not None:
        overrides["stopping_step"] = args.stopping_step
    if data.name != "ml-100k":
        sys.exit(f"recbole_sasrec: RecBole reads dataset `ml-100k` from a folder of that name, not {data.name}")
    config = Config(model="SASRec", dataset="ml-100k", config_file_list=[str(config_path)], config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # The split must be ours: the same counts, and the same validation and test item for every user.
    ours, n_users, n_items, n_inter, tied = file_split(data / "ml-100k.inter")
    uid, iid = dataset.uid_field, dataset.iid_field
    histories = user_histories(dataset)
    counts = {
        "users": dataset.user_num - 1,  # RecBole's id 0 is padding
        "items": dataset.item_num - 1,
        "interactions": sum(len(h) for h in histories.values()),
        "valid users": len(valid_data._dataset),
        "test users": len(test_data._dataset),
    }
    expected = {"users": n_users, "items": n_items, "interactions": n_inter,
                "valid users": len(ours), "test users": len(ours)}
    if counts != expected:
        sys.exit(f"recbole_sasrec: RecBole's counts {counts} differ from the file's {expected}")
    differ = 0
    for part, column in ((valid_data, 0), (test_data, 1)):
        inter = part._dataset.inter_feat
        users = dataset.id2token(uid, inter[uid].numpy())
        items = dataset.id2token(iid, inter[iid].numpy())
        differ += sum(ours[u][column] != i for u, i in zip(users, items))
    print(f"split: {counts}; {tied} users have a timestamp tie among their last three items; "
          f"{differ} validation/test items differ from a stable time sort of the file", flush=True)

    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = budgeted_trainer(Trainer, args.max_seconds)(config, model)
    if args.checkpoint:
        trained = {"checkpoint": args.checkpoint}
        model_file = args.checkpoint
    else:
        start = time.time()
        try:
            trainer.fit(train_data, valid_data, saved=True, show_progress=False)
            budget_spent = False
        except BudgetSpent:
            budget_spent = True  # the best epoch's checkpoint is already saved
        epochs = len(trainer.train_loss_dict)
        trained = {
            "train_seconds": round(time.time() - start, 1),
            "epochs": epochs,
            "best_epoch": epochs - trainer.cur_step * config["eval_step"],
            "stopped_by": "time budget" if budget_spent else "early stopping or the epoch limit",
        }
        model_file = None  # the best epoch's, which fit saved
    recbole_test = dict(
        trainer.evaluate(test_data, load_best_model=True, model_file=model_file, show_progress=False)
    )

    # Our metrics on the best model, with each user's full history as the seen items.
    model = trainer.model
    model.eval()
    test_inter = test_data._dataset.inter_feat
    with torch.no_grad():
        scores = model.full_sort_predict(test_inter)
    targets = test_inter[iid].tolist()
    seen = []
    for u, target in zip(test_inter[uid].tolist(), targets):
        if histories[u][-1] != target:
            sys.exit(f"recbole_sasrec: the test item of user {u} is not the user's last item")
        seen.append(histories[u][:-1])
    ours_test = ranked_metrics(scores, targets, seen)

    result = {
        "recbole_test": recbole_test,
        "test": ours_test,
        **trained,
        "threads": args.threads,
        "counts": counts,
        "out": str(out),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print("RecBole test metrics (its full ranking, seen items not filtered): "
          + ", ".join(f"{k} {v:.4f}" for k, v in recbole_test.items()))
    for tag in ("filtered", "unfiltered"):
        print(f"test, seen items {tag} (ties as `recsys eval` breaks them): "
              + ", ".join(f"{k.split()[0]} {ours_test[k]:.4f}" for k in ours_test if k.endswith(" " + tag)))
    if "epochs" in trained:
        print(f"trained {trained['epochs']} epochs (best {trained['best_epoch']}, stopped by "
              f"{trained['stopped_by']}) in {trained['train_seconds']:.0f} s wall on {args.threads} torch "
              f"thread(s); logs and checkpoint in {out}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
