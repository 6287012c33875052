// Package stocktest is the kit the tests of every package share: waiting for
// a condition, buyers and crowds that speak the hot endpoint's contract,
// building the stockd binary once per test binary, and fixtures (a SKU made
// through the admin API), and each test's own pieces of the real services
// (a MySQL database, a RabbitMQ queue, Redis instances, sentinels and
// clusters, a cuttable TCP proxy). It is an ordinary package so any _test.go
// file can import it; production code never does.
package stocktest
