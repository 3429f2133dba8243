package embedded

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Main is the main function of kdeliver's example programs: it parses a
// -brokers flag (none: the example starts an embedded cluster, see
// [Brokers]), runs run with a one-minute limit, writing to stdout, and exits
// non-zero with the error on stderr if it fails.
func Main(name string, run func(ctx context.Context, brokers []string, w io.Writer) error) {
	brokers := flag.String("brokers", "", "comma-separated brokers of a real cluster (default: an embedded one)")
	flag.Parse()
	var given []string
	if *brokers != "" {
		given = strings.Split(*brokers, ",")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err := run(ctx, given, os.Stdout)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
