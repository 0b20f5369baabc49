"""edgert chat MODEL: a streaming REPL. /reset, /system TEXT, /exit; Ctrl-C stops a reply."""

import sys

from tools.common import add_model_argument, add_sampling_arguments, load_model, sampling

HELP = "commands: /reset  /system TEXT  /exit   (Ctrl-C stops a reply, Ctrl-D leaves)"


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model")
    add_model_argument(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--think", action="store_true", help="let the model think before answering")
    add_sampling_arguments(p)
    p.set_defaults(func=main, max_new_tokens=1024)


def main(args) -> int:
    model = load_model(args)
    session = model.chat_session(system=args.system, think=args.think, **sampling(args))
    if not model.has_chat_template:
        print("note: this model file carries no chat template, so it is probably a base (pretrained) model; "
              "its replies will read as continuations", file=sys.stderr)
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D to leave)", file=sys.stderr)
            continue
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/system"):
            session.reset(system=line[len("/system"):].strip())
            print("(system prompt set; conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(HELP, file=sys.stderr)
            continue
        reply = session.stream(line, max_new_tokens=args.max_new_tokens)
        try:
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        if args.think and reply.thought:
            print(f"(thought: {len(reply.thought)} characters)", file=sys.stderr)
