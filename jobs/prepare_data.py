"""Convert an image source into pudnet's class-partitioned Parquet shards (``pudnet/data/shards.py``) with Ray Data.

    python jobs/prepare_data.py ilsvrc /data/ILSVRC2012 --out s3://BUCKET/shards/imagenet-112px --image-size 112
    python jobs/prepare_data.py folder ~/pets --out ~/.cache/pudnet/shards/pets-32px
    python jobs/prepare_data.py embedded --out ~/.cache/pudnet/shards      # the embedded default sources
    ray job submit --working-dir . -- python jobs/prepare_data.py ilsvrc s3://BUCKET/ILSVRC2012 --out s3://...

``ilsvrc`` reads ``train/<wnid>/*.JPEG`` (meta-training images) and ``val/`` (kept as test images): class
folders, or flat files labelled by ``--val-labels`` (default ``ROOT/LOC_val_solution.csv``; lines
``<image id>[,| ]<wnid> ...``). ``folder`` reads ``ROOT/<class>/**/<image>``, keeping ``--test-fraction``
of each class as test images. Paths may be any URI pyarrow opens. CPU tasks read, decode and resize
(``pudnet.data.sources.decode_labelled_images``, the one decoder) and write shards; the driver only sees
file names. Unreadable images are skipped, counted and logged. Re-running with the same settings is a
no-op; a crash leaves no shard that the manifest lists.
"""

import argparse

from jobs.connect import ray_cluster, run_job
from jobs.sharding import list_folder, list_ilsvrc, prepare_embedded, prepare_listing
from pudnet.data.sources import DEFAULT_SOURCES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("ilsvrc", "folder", "embedded"))
    parser.add_argument("root", nargs="?", help="source folder or URI (ilsvrc, folder)")
    parser.add_argument("--out", required=True, help="shard directory (embedded: the data_dir, one folder per source)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--test-fraction", type=float, default=0.2, help="folder/embedded: test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", help="class-name prefix (default: the root folder's name; ilsvrc: imagenet)")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help="embedded: comma-separated source names (the class-bank ones too, when installed)")
    parser.add_argument("--val-labels", help="ilsvrc: label file for a flat val/ folder")
    parser.add_argument("--overwrite", action="store_true", help="replace shards made with other settings")
    parser.add_argument("--address", help="Ray cluster (host:port, auto); default RAY_ADDRESS, else a new local one")
    args = parser.parse_args(argv)
    if args.kind != "embedded" and not args.root:
        parser.error(f"{args.kind} needs ROOT, the source folder or URI")
    with ray_cluster(args.address):
        prepare(args)


def prepare(args: argparse.Namespace) -> None:
    if args.kind == "embedded":
        prepare_embedded(args.sources.split(","), args.out, args.image_size, args.max_per_class, args.test_fraction,
                         args.seed)
        return
    root = args.root.rstrip("/")
    if args.kind == "ilsvrc":
        listing = list_ilsvrc(root, args.val_labels, args.max_per_class)
        fingerprint = {"kind": "ilsvrc", "root": root, "max_per_class": args.max_per_class}
    else:
        listing = list_folder(root, args.test_fraction, args.seed, args.max_per_class)
        fingerprint = {"kind": "folder", "root": root, "max_per_class": args.max_per_class,
                       "test_fraction": args.test_fraction, "seed": args.seed}
    source = args.source or ("imagenet" if args.kind == "ilsvrc" else root.rsplit("/", 1)[-1])
    prepare_listing(listing, args.out, source, args.image_size, fingerprint, args.overwrite)


if __name__ == "__main__":
    run_job(main)
