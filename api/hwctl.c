#include <stdio.h>

int main(void)
{
    fprintf(stderr, "usage: hwctl COMMAND\n");
    return 2;
}
