// Validates prometheus-operator resources with the JSON schemas that
// @kubernetes-models/prometheus-operator (pinned in package.json) generated from the operator's
// API types: types, required fields, enums and patterns (durations, schemes, ...).
// Unknown fields are not an error in these schemas (nor in the CRDs' openAPIV3Schema); the
// tests catch them with tsc against the same package's TypeScript interfaces.
//
//   node check-crds.mjs objects.json    # a JSON array of objects; prints one line per object
// Exit status: 0 all valid, 1 some invalid, 2 usage or an unsupported kind.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const MODELS = { ServiceMonitor, PodMonitor, PrometheusRule };
const require = createRequire(import.meta.url);
const version = require("@kubernetes-models/prometheus-operator/package.json").version;

if (process.argv.length !== 3) {
  console.error("usage: node check-crds.mjs objects.json");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(process.argv[2], "utf-8"));
let invalid = 0;
for (const object of objects) {
  const Model = MODELS[object.kind];
  const where = `${object.kind} ${object.metadata?.name}`;
  if (object.apiVersion !== "monitoring.coreos.com/v1" || !Model) {
    console.log(`UNSUPPORTED ${where} (${object.apiVersion})`);
    process.exit(2);
  }
  try {
    new Model(object).validate();
    console.log(`valid ${where} (@kubernetes-models/prometheus-operator ${version})`);
  } catch (error) {
    invalid += 1;
    console.log(`INVALID ${where}: ${error.message}`);
  }
}
process.exit(invalid ? 1 : 0);
