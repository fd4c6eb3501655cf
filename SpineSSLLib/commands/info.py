"""``spine-ssl info``: versions and the compute device SpineSSL would use."""

NAME = "info"
HELP = "show versions of SpineSSL and its libraries, and the compute device"


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def environment() -> dict:
    import platform

    from .. import __version__

    info = {"spinessl": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "torch", "monai", "pydicom", "SimpleITK"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", None) or getattr(m, "Version", lambda: "?")()
        except Exception as e:  # report, do not fail: this command exists to diagnose installs
            info[mod] = f"not importable ({type(e).__name__})"
    try:
        import torch

        info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cpu_threads"] = torch.get_num_threads()
    except Exception:
        info["device"] = "unknown"
    return info


def run(args) -> int:
    import json

    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>12}: {v}")
    return 0
