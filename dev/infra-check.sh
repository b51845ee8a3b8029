#!/usr/bin/env bash
# Lints infra/template.yaml offline: cfn-lint (CloudFormation and SAM rules),
# then checkov on the template as written and on its SAM translation (where
# the generated IAM roles, the schedule rule and its permission exist, which
# checkov cannot see in the untranslated form). Every checkov finding is
# either fixed in the template or suppressed there inline with its reason;
# this fails on any failed check and when checkov examined nothing.
#
#   dev/infra-check.sh
#   INFRA_TEMPLATE=other.yaml dev/infra-check.sh   (another template, e.g. to see a failure)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

TEMPLATE=${INFRA_TEMPLATE:-infra/template.yaml}
# Each from its own pinned virtualenv (dev/tools.lock).
CFN_LINT_ENV=$(use_tool cfn-lint)
CHECKOV_ENV=$(use_tool checkov)

log "cfn-lint $TEMPLATE ($("$CFN_LINT_ENV/bin/cfn-lint" --version))"
"$CFN_LINT_ENV/bin/cfn-lint" "$TEMPLATE"

# run_checkov <file> <label>: checkov's findings, its counts, and a failure
# when anything failed or nothing was checked.
run_checkov() {
  local file=$1 label=$2 out summary passed failed skipped
  log "checkov: $label"
  # checkov exits non-zero on a failed check; the counts below decide.
  out=$("$CHECKOV_ENV/bin/checkov" -f "$file" --framework cloudformation --skip-download --compact --quiet 2>&1) || true
  printf '%s\n' "$out"
  summary=$(printf '%s\n' "$out" | grep -Eo 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' | head -n1 || true)
  if [ -z "$summary" ]; then
    echo "error: checkov printed no summary for $label (did it parse the template?)" >&2
    exit 1
  fi
  passed=$(sed -E 's/.*Passed checks: ([0-9]+).*/\1/' <<<"$summary")
  failed=$(sed -E 's/.*Failed checks: ([0-9]+).*/\1/' <<<"$summary")
  skipped=$(sed -E 's/.*Skipped checks: ([0-9]+).*/\1/' <<<"$summary")
  echo "checkov ($label): passed $passed, failed $failed, skipped $skipped"
  if (( passed + failed + skipped == 0 )); then
    echo "error: checkov examined no resource in $label" >&2
    exit 1
  fi
  if (( failed > 0 )); then
    echo "error: $failed checkov check(s) failed in $label: fix them, or suppress each inline in $TEMPLATE with a reason" >&2
    exit 1
  fi
}

run_checkov "$TEMPLATE" "$TEMPLATE"

# The SAM translation, with the same translator cfn-lint uses (aws-sam-translator,
# installed with it in cfn-lint's virtualenv). A placeholder S3 CodeUri stands in for `sam package`;
# no AWS call is made.
translated="$STATE_DIR/template.translated.json"
AWS_DEFAULT_REGION=us-east-1 "$CFN_LINT_ENV/bin/python" - "$TEMPLATE" "$translated" <<'PY'
import json
import sys

from cfnlint.decode import decode
from samtranslator.translator.transform import transform


class Policies:
    def load(self):
        return {
            "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        }


template, matches = decode(sys.argv[1])
if matches:
    sys.exit(f"cannot parse {sys.argv[1]}: {matches}")
template = json.loads(json.dumps(template))
placeholder = "s3://placeholder/code.zip"
template.setdefault("Globals", {}).setdefault("Function", {})["CodeUri"] = placeholder
for resource in template.get("Resources", {}).values():
    if resource.get("Type") == "AWS::Serverless::Function" and "CodeUri" in resource.get("Properties", {}):
        resource["Properties"]["CodeUri"] = placeholder
with open(sys.argv[2], "w") as f:
    json.dump(transform(template, {}, Policies()), f, indent=1)
PY
run_checkov "$translated" "SAM translation of $TEMPLATE"
log "infrastructure checks passed"
