// Command hello is the program the image tests build.
package main

import "fmt"

func main() { fmt.Println("hello") }
