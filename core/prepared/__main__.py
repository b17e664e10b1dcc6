"""`python -m core.prepared --prepared DIR --source-root ... [--target-root ...]`: make (or bring
up to date) the prepared copies that a training run with the same data flags reads."""
from core import build, cli, outputs
from core.prepared import FORMATS, use_prepared


def parse_args(argv=None):
    parser = cli.new_parser(__doc__)
    parser.prog = "python -m core.prepared"
    cli.add_data_args(parser, target=True)
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="for a new copy: png (default, compact) or npy (fastest, 2.5x "
                             "the disk)")
    args = parser.parse_args(argv)
    if not args.prepared:
        parser.error("--prepared DIR is required: the folder of the prepared copies")
    if not (args.source_root or args.target_root):
        parser.error("give --source-root and/or --target-root: the datasets to prepare")
    outputs.check_outputs(parser, args, "core.prepared")
    args.source_size = tuple(args.source_size or cli.DATASET_SIZES[args.source])
    args.target_size = tuple(args.target_size or cli.DATASET_SIZES["cityscapes"])
    return args


def main(args):
    """Prepare the training sets a run with the same data flags reads."""
    folder, args.prepared, args.pseudo = args.prepared, None, None   # raw sets, prepared here
    datasets = []
    if args.source_root:
        datasets.append(build.source_dataset(args))
    if args.target_root:
        datasets.append(build.target_dataset(args))
    for dataset in datasets:
        use_prepared(dataset, folder, args.workers, args.format)
        print(f"ready: {dataset.prepared.folder} ({len(dataset)} items)", flush=True)


if __name__ == "__main__":
    cli.entry(main, parse_args)
