"""``spine-ssl`` subcommands, one module each (see ``SpineSSLLib.cli``)."""

# Order in ``spine-ssl --help``: the pipeline order.
ORDER = ["info", "synth", "synth-alt", "index", "extract", "merge", "detect-train", "detect", "pretrain", "eval-pairs",
         "probe", "grade-train", "grade", "reproduce", "reid-audit", "audit-outputs"]
