"""The data layer: sources, tokenisation, partitioning among participants, and prepared data
stored once on disk and memory-mapped by every process that hosts participants.

    spec = check_data_spec(scenario["data"])
    path = prepare_data(spec, family="text", num_participants=10, seed=0, cache_dir="~/.cache/fedgrow",
                        max_positions=64, vocab_size=8000)
    data = PreparedData.open(path)
    for batch in data.participant(3).train.batches(32, torch.Generator().manual_seed(0)):
        loss = model(**batch).loss

The `data:` keys of a scenario (defaults after `=`):

    source                  required: synthetic_text | synthetic_image (offline, generated from the
                            seed) | ag_news | 20newsgroups | cifar10 | cifar100 | flowers102
                            (Hugging Face datasets: downloaded or from the local cache) | files
    num_classes = 4         synthetic: number of classes (synthetic_image: at most 10);
                            files with integer labels: labels must lie in 0..num_classes-1
                            (default: the largest label + 1)
    train_size = 4000       synthetic only
    test_size = 1000        synthetic only
    label_noise = 0.05      synthetic only: share of labels replaced by another class
    files:                  source files only (`python -m fedgrow_ray.data.offline` exports
                            real datasets that ship offline, digits and WordNet, to such files)
      train                 required: a Parquet, CSV or JSON Lines file, or an image folder
                            (root/<class name>/<image>)
      test = null           same format; null: a seeded test_fraction of train is held out
      format                parquet | csv | jsonl | imagefolder; default: from the suffix
                            (no suffix: imagefolder)
      text_column           the column of texts, or
      image_column          the column of images (Hugging Face image records, or image bytes, or
                            paths relative to the file); exactly one of the two (not imagefolder)
      label_column = label  integers 0..K-1 or strings (classes = the sorted distinct strings)
      test_fraction = 0.2
    max_train_samples = null   a seeded random subset of the training set of this size
    partition:              how the training set is shared among participants
      scheme = dirichlet    iid | dirichlet | quantity_skew | shards
      alpha = 0.5           dirichlet: label skew, small = few classes each (the paper: 0.5, or 100 ~ iid)
      min_samples = 2       dirichlet, quantity_skew: the fewest training samples a participant gets
      sigma = 1.0           quantity_skew: lognormal spread of the participants' sizes
      shards_per_participant = 2   shards: label-sorted shards each (about that many classes)
    test_per_participant = 100  each participant's test split, drawn from the test set with its
                            own training label mix
    global_test_size = null     the shared test set: a seeded subset of this size, null = all
    tokenizer = train       text only: train a word-level tokenizer on the training texts (at
                            most vocab_size entries), or from_checkpoint: encode with the
                            Hugging Face tokenizer saved in each participant's model.checkpoints
                            folder (WordPiece, BPE, ...; one encoding per distinct tokenizer)

Datasets offline: a Hugging Face source must be in the local cache of every node that hosts
participants. On a machine with internet, either run
    python -c "import datasets; datasets.load_dataset('fancyzhx/ag_news')"
and copy its ~/.cache/huggingface to the machine (or point HF_HOME at the copy), or export the
splits to Parquet,
    python -c "import datasets; datasets.load_dataset('fancyzhx/ag_news', split='train').to_parquet('train.parquet')"
(and the same for 'test'), then use source: files with files: {train: train.parquet,
test: test.parquet, text_column: text, label_column: label} (each dataset's columns: HUB in
sources.py).
"""

from .partition import PARTITIONERS, partition
from .sources import HUB, DatasetUnavailable
from .spec import check_data_spec
from .store import ParticipantData, PreparedData, Shard, prepare_data

__all__ = ["HUB", "PARTITIONERS", "DatasetUnavailable", "ParticipantData", "PreparedData", "Shard",
           "check_data_spec", "partition", "prepare_data"]
