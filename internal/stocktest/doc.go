// Package stocktest is the kit the tests of every package share: waiting for
// a condition, buyers and crowds that speak the hot endpoint's contract,
// building the stockd binary once per test binary, and fixtures (a SKU made
// through the admin API). It is an ordinary package so any _test.go file can
// import it; production code never does.
//
// Services (databases, queues, Redis, proxies) live in internal/testenv.
package stocktest
