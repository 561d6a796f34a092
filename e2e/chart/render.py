"""Prints the chart rendered by Helm's engine as one YAML stream, for `kubectl apply -f -`.

    render.py RELEASE NAMESPACE [VALUES_JSON]
"""

import json
import sys

import yaml

import chart


def main():
    release, namespace = sys.argv[1], sys.argv[2]
    values = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    objects = chart.render(values, name=release, namespace=namespace)
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


if __name__ == "__main__":
    main()
