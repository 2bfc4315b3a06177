"""Prints a SAM template as the pinned aws-sam-translator (scripts/requirements.txt)
translates it, as JSON: what CloudFormation deploys. Used by tests/template_rules.rs.

    .venv/bin/python scripts/sam-translate.py infra/template.yaml [Name=Value ...]

Parameter values are passed to the translator as CloudFormation passes them;
conditions (Fn::If) stay unresolved, as in CloudFormation's processed template.
"""
import json
import os
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """The template names no managed policies by name, so none is looked up."""

    def load(self):
        return {}


def main():
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    with open(sys.argv[1]) as f:
        template = yaml_parse(f.read())
    parameters = dict(arg.split("=", 1) for arg in sys.argv[2:])
    # What `cloudformation package` does before the translation: a local
    # CodeUri becomes the S3 location of the uploaded zip.
    for resource in template.get("Resources", {}).values():
        code = resource.get("Properties", {}).get("CodeUri")
        if isinstance(code, str) and not code.startswith("s3://"):
            resource["Properties"]["CodeUri"] = "s3://packaged/" + code.lstrip("./")
    json.dump(transform(template, parameters, NoManagedPolicies()), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
