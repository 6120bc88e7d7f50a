// JSON output for every file anyk writes (metrics.jsonl, sweep.json, eval, frontier and analysis
// JSON, the safetensors header): nlohmann-json values with keys in insertion order, written on
// one line as `{"key": value, "list": [1, 2]}` (the form tools/*.py and the tests read).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace anyk::io {

using Json = nlohmann::ordered_json;

// j on one line, ", " between items and ": " after keys. Doubles: the shortest text that reads
// back to the same value (integral ones keep a ".0"); NaN and infinities: null.
std::string json_text(const Json& j);

}  // namespace anyk::io
