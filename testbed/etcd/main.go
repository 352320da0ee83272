// Command etcd is etcd's server, built from the published go.etcd.io/etcd/server/v3
// module. etcd's own main module replaces its siblings with local paths and cannot
// be installed with `go install`; its main is this one call.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
