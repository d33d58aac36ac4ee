"""`regionguard nft`, the command: compile the policy to table inet regionguard and print,
check, load, delete or keep it loaded (--watch). Its options are in regionguard/cli.py.

Exit codes (regionguard/exits.py): 0 done; 2 invalid policy or options; 6 (EXIT_NFT) nft could
not do it: not root, nft not installed, or the kernel refused the ruleset (nothing changed).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from regionguard.core.errors import ConfigError
from regionguard.core.learned import LearnedStore, open_state
from regionguard.core.paths import policy_path
from regionguard.core.reload import EngineHolder
from regionguard.core.zoom import ZoomCatalogue
from regionguard.exits import EXIT_CONFIG, EXIT_NFT, EXIT_OK
from regionguard.nft import apply
from regionguard.nft.ruleset import Options, compile_ruleset, fail_closed_ruleset
from regionguard.nft.watch import Watcher


def cmd_nft(args: argparse.Namespace) -> int:
    try:
        options = Options(hook=args.hook, verdict=args.verdict, log_prefix=args.log_prefix,
                          priority=args.priority)
    except ValueError as e:
        print(f"regionguard nft: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if not 0 < args.interval <= 3600 or not 0 <= args.learned_every <= 86400:
        print("regionguard nft: --interval: above 0 and at most 3600 seconds; --learned-every: "
              "0 to 86400 seconds", file=sys.stderr)
        return EXIT_CONFIG
    if args.log_prefix is not None and not 0 < len(args.log_prefix) <= 127:
        print("regionguard nft: --log-prefix: 1 to 127 characters", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.delete:
            apply.need_root("regionguard nft --delete")
            apply.delete_table()
            print("regionguard nft: table inet regionguard deleted (if there was one)",
                  file=sys.stderr)
            return EXIT_OK
        if args.apply or args.check or args.watch:
            what = "--apply" if args.apply else "--check" if args.check else "--watch"
            apply.need_root(f"regionguard nft {what}")
            apply.nft_binary()
        learned = open_state(args.state_dir)
        try:
            if args.watch:
                return _watch(learned, options, args)
            holder = EngineHolder(policy_path(args.policy), learned=learned)
            return _once(holder, options, args)
        finally:
            if learned is not None:
                learned.close()
    except apply.NftError as e:
        print(f"regionguard nft: {e}", file=sys.stderr)
        return EXIT_NFT
    except ValueError as e:   # the evidence cannot be compiled (see ruleset._split_per_address)
        print(f"regionguard nft: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _first_policy(learned: LearnedStore | None, options: Options, args: argparse.Namespace,
                  stop: threading.Event) -> EngineHolder | None:
    """The policy's engine, once it loads. Until then Zoom is blocked (fail closed): every
    client, every Zoom address, every port; the policy file is tried again each interval.
    None when stopped first."""
    path = policy_path(args.policy)
    closed = False
    while True:
        try:
            return EngineHolder(path, learned=learned)
        except ConfigError as e:
            if not closed:
                apply.run_batch(fail_closed_ruleset(ZoomCatalogue.load(), options).document())
                closed = True
                print(f"regionguard nft: the policy cannot be loaded:\n{e}\nregionguard nft: "
                      "failing closed: every Zoom address is blocked for every client until "
                      f"{path} loads (tried every {args.interval:g} s)", file=sys.stderr,
                      flush=True)
        if stop.wait(args.interval):
            return None


def _once(holder: EngineHolder, options: Options, args: argparse.Namespace) -> int:
    started = time.monotonic()
    compiled = compile_ruleset(holder.engine, options)
    compiled_in = time.monotonic() - started
    document = compiled.document()
    if args.print:
        # one command a line: a diff of two prints shows what changed, set by set
        sys.stdout.write('{"nftables": [\n' + ",\n".join(json.dumps(c) for c in
                                                         document["nftables"]) + "\n]}\n")
        print("\n".join(compiled.summary()), file=sys.stderr)
        return EXIT_OK
    apply.run_batch(document, check_only=bool(args.check))
    verb = "checked: nft accepts it" if args.check else "loaded"
    print(f"regionguard nft: table inet regionguard {verb} (hook {options.hook}, policy "
          f"{compiled.policy_version}, {len(compiled.sets)} sets, "
          f"{sum(len(s.elements) for s in compiled.sets)} elements; compiled in "
          f"{compiled_in:.2f} s)", file=sys.stderr)
    return EXIT_OK


def _watch(learned: LearnedStore | None, options: Options, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    holder = _first_policy(learned, options, args, stop)
    if holder is None:
        return EXIT_CONFIG
    watcher = Watcher(holder, options, say=lambda m: print(m, file=sys.stderr, flush=True),
                      learned_every=args.learned_every)
    endpoint = None
    if args.metrics:
        from regionguard.metrics.address import parse_metrics_address
        from regionguard.nft.metrics import start_metrics

        address, problem = parse_metrics_address(args.metrics)
        if problem is not None:
            raise ConfigError([problem])
        assert address is not None
        endpoint = start_metrics(address, watcher)
    try:
        watcher.run(stop, args.interval)
    finally:
        if endpoint is not None:
            endpoint.stop()
    print("regionguard nft: stopped; table inet regionguard stays loaded "
          "(`regionguard nft --delete` removes it)", file=sys.stderr)
    return EXIT_OK
