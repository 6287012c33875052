// Package api holds stockd's OpenAPI 3.1 document (openapi.yaml): the hot
// endpoint and the admin API, every route, body, answer, status and error
// code. It is embedded so that the admin port serves it (GET /openapi.yaml);
// daemon's TestOpenAPI drives a real node through every route and status
// and validates each exchange against it, so it cannot drift from the code.
package api

import _ "embed"

// OpenAPI is api/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
